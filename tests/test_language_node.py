"""The run's language is its composed node in every entry point that has one (issue 23 item 1): eatlab-finetune's
and eatlab-align-eval's prompts name `language.name` (overridden, or a language of one's own), not the package's
table; the other codes of `finetune.languages` keep the shipped names."""

from __future__ import annotations

from pathlib import Path

from eatlab.data.languages import Language
from eatlab.finetune.eacl import AlignedPair
from eatlab.finetune.tasks import Templates, build_examples

PLUGINS = Path(__file__).parent / "plugins"


def test_finetune_and_align_eval_prompts_name_the_composed_language():
    from hydra import compose, initialize_config_dir

    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="finetune", overrides=[f"hydra.searchpath=[file://{PLUGINS / 'conf'}]", "language=sw"]
        )
    sw = Language.from_config(cfg)  # tests/plugins/conf/language/sw.yaml: not in the package
    assert (sw.code, sw.name) == ("sw", "Swahili")
    templates = Templates.from_config(cfg.finetune.templates, languages=(sw,))
    pairs = [AlignedPair("sw", 0, "Kenya", "Kenya", "Kenya ni nchi.", 0, 5, "verbatim"),
             AlignedPair("ja", 1, "Tokyo", "東京", "東京は都市。", 0, 2, "verbatim")]  # fmt: skip
    backward, forward = (build_examples(pairs, [d], templates) for d in ("backward", "forward"))
    assert "Swahili sentence" in backward[0].messages[-1]["content"]
    assert "Japanese sentence" in backward[1].messages[-1]["content"]  # another code: the shipped table
    assert "Swahili phrase" in forward[0].messages[-1]["content"]
    klingon = Templates.from_config(cfg.finetune.templates, languages=(Language("ja", "Klingon", "Han", True, True,
                                                                                False, True, "ja-mecab"),))  # fmt: skip
    assert "Klingon sentence" in build_examples(pairs[1:], ["backward"], klingon)[0].messages[-1]["content"]
    # without the run's language (a caller of its own), the shipped names as before
    assert (
        build_examples(pairs[1:], ["backward"], Templates.from_config(cfg.finetune.templates)) == backward[1:]
    )
