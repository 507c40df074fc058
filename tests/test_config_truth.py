"""What the composed config says is what runs (issue 23): the language node, backends checked against their class
before any work (also fully cached), capabilities declared by the class, the documented types arriving, user
errors keeping their traceback, one cache identity (fp32 and bf16 never share an answer) and `model.path`
meaning "these weights" with any model group."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eatlab.cli.config_check import validate_config
from eatlab.cli.run import eat_task, run_eat
from eatlab.cli.task import run_task
from eatlab.errors import ConfigError
from eatlab.llm.base import GenerationSettings, ModelSpec

PLUGINS = Path(__file__).parent / "plugins"
SEARCH = f"hydra.searchpath=[file://{PLUGINS / 'conf'}]"
ECHO = [SEARCH, "backend=echo", "extractor=capitalised", "method=exact_copy"]  # no weights, no NER model


@pytest.fixture(autouse=True)
def _plugins_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


def _forward_prompts(run: Path) -> str:
    recs = [
        json.loads(ln) for ln in (run / "artifacts/forward.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return json.dumps(recs, ensure_ascii=False)


def test_an_overridden_language_name_is_what_the_prompts_say(compose, tmp_path):
    cfg = compose([*ECHO, "language=zh", "language.name=Klingon", "data.limit=2"])
    m = run_eat(cfg, tmp_path / "run")
    prompts = _forward_prompts(tmp_path / "run")
    assert "Here is a Klingon sentence" in prompts and "Chinese" not in prompts
    assert m["run"]["language"] == "zh" and m["n_sentences"] == 2


def test_a_language_of_ones_own_runs_from_the_search_path(compose, tmp_path):
    cfg = compose([*ECHO, "language=sw", f"data.root={PLUGINS / 'data'}", "data.drop_redirects=true"])
    validate_config(cfg)
    m = run_eat(cfg, tmp_path / "run")
    assert m["run"]["language"] == "sw" and m["n_sentences"] == 4
    assert m["data"]["n_redirects_removed"] == 1  # its own redirect word, ELEKEZA
    assert "Here is a Swahili sentence" in _forward_prompts(tmp_path / "run")
    # the echo "translation" is the sentence itself; the capitalised-words NER finds each name, placed verbatim
    assert (m["n_gold_entities"], m["n_pred_entities"]) == (8, 9)


@pytest.mark.slow
def test_a_language_of_ones_own_runs_end_to_end_with_the_tiny_model(compose, tmp_path):
    cfg = compose([SEARCH, "language=sw", f"data.root={PLUGINS / 'data'}", "extractor=capitalised"])
    m = run_eat(cfg, tmp_path / "run")
    assert m["run"]["language"] == "sw" and m["run"]["smoke_model"] is True and m["llm_calls"] > 0
    assert "Here is a Swahili sentence" in _forward_prompts(tmp_path / "run")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+backend.defualt=hi",
            "backend.defualt=hi: unknown key (eatlab.llm.hf.HFBackend takes: batch_size,",
        ),
        ("backend.batch_size=abc", "backend.batch_size=abc: expected a whole number"),
        ("+extractor.bogus=1", "extractor.bogus=1: unknown key"),
        ("+method.threshold=1", "method.threshold=1: unknown key (eatlab.eat.methods.eat.EAT takes: name)"),
    ],
)
def test_a_typo_in_any_node_is_one_line_naming_the_key(compose, override, message):
    with pytest.raises(ConfigError) as err:
        validate_config(compose([override]))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_backend_typo_is_seen_when_every_answer_is_cached(compose, tmp_path, capsys):
    cfg = compose([*ECHO, "data.limit=2"])
    m = run_eat(cfg, tmp_path / "run1")
    again = run_eat(compose([*ECHO, "data.limit=2"]), tmp_path / "run2")
    assert m["llm_calls"] > 0 and again["llm_calls"] == 0  # fully cached: the backend is never built
    bad = compose([*ECHO, "data.limit=2", "+backend.defualt=hi"], run_dir=tmp_path / "run3")
    with pytest.raises(SystemExit) as exit_:
        run_task(eat_task, bad, "config", "exact_copy")
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: backend.defualt=hi: unknown key (mylab.EchoBackend takes: prefix)"
    )
    assert not (tmp_path / "run3" / "metrics.json").exists()


def test_capabilities_are_declared_by_the_class_and_inherited(compose):
    from mylab import CountingHF, EchoBackend

    from eatlab.llm.hf import HFBackend

    assert HFBackend.rank_scoring and CountingHF.rank_scoring and not EchoBackend.rank_scoring
    validate_config(compose([SEARCH, "backend=counting_hf", "alignment=ranked"]))
    with pytest.raises(ConfigError, match=r"alignment.select=rank needs backend=hf .*mylab.EchoBackend"):
        validate_config(compose([*ECHO, "alignment=ranked"]))
    with pytest.raises(
        ConfigError, match="backend.defualt=1: unknown key"
    ):  # the parent's keys, and only those
        validate_config(compose([SEARCH, "backend=counting_hf", "+backend.defualt=1"]))


@pytest.mark.slow
def test_a_subclass_of_the_hf_backend_runs_ranked_alignment_on_the_tiny_model(compose, tmp_path):
    cfg = compose([SEARCH, "backend=counting_hf", "alignment=ranked", "extractor=capitalised", "data.limit=2",
                   "language=de"])  # fmt: skip
    validate_config(cfg)
    m = run_eat(cfg, tmp_path / "run")
    assert m["llm_calls"] > 0 and m["stages"]["backward"]["llm_calls"] > 0
    from eatlab.llm.cache import ResponseCache

    cache = ResponseCache(cfg.cache.path, mode="readonly")
    ranked = [e for e in cache.entries() if e.reply.meta.get("selected_by") == "rank"]
    assert ranked and all(
        e.engine == "hf" for e in ranked
    )  # the final backward answers, scored by the subclass


def test_a_wrapping_backend_receives_a_model_spec(compose):
    from mylab import WrappedHF

    from eatlab.llm.factory import backend_identity, build_backend

    cfg = compose([SEARCH, "backend=wrapped_hf"])
    backend = build_backend(cfg)
    assert isinstance(backend, WrappedHF) and isinstance(backend.model, ModelSpec)
    assert backend.model.smoke and not backend.inner.loaded and backend.inner.batch_size == 4
    assert backend_identity(cfg) == ("wrapped_hf", backend.model_key)


def test_an_error_in_user_code_keeps_its_traceback(compose, tmp_path):
    cfg = compose([SEARCH, "backend=broken", "extractor=capitalised", "method=exact_copy", "data.limit=1"])
    with pytest.raises(AttributeError, match="revsion"):
        run_task(eat_task, cfg, "config", "exact_copy")
    err = json.loads((tmp_path / "run" / "error.json").read_text(encoding="utf-8"))
    assert err["error_type"] == "AttributeError"
    assert "mylab.py" in err["traceback"] and "model.revsion" in err["traceback"]


# ------------------------------------------------------------------------------------------- cache identity
def test_fp32_and_bf16_calls_have_different_cache_keys(compose, tmp_path):
    from eatlab.llm.factory import build_client

    conv, settings = [{"role": "user", "content": "Translate: Berlin"}], GenerationSettings(max_new_tokens=3)
    keys = {
        dtype: build_client(compose([f"backend.dtype={dtype}"])).key(conv, settings)
        for dtype in ("float32", "bfloat16", "float16")
    }
    assert len(set(keys.values())) == 3
    on_cpu = build_client(compose(["backend.device=cpu"]))  # dtype auto on the CPU: fp32, the same key
    assert on_cpu.key(conv, settings) == keys["float32"] and not on_cpu.backend_created


@pytest.mark.slow
def test_provenance_names_the_resolved_compute_dtype(compose):
    """provenance.json's `compute`: `auto` resolved (fp32 on the CPU), invariance only in half precision."""
    from eatlab.llm.factory import backend_compute

    assert backend_compute(compose(["backend.device=cpu"])) == {"dtype": "float32", "batch_invariant": False}
    assert backend_compute(compose(["backend.dtype=bfloat16"])) == {
        "dtype": "bfloat16",
        "batch_invariant": True,
    }
    assert backend_compute(compose(["backend.dtype=bfloat16", "backend.batch_invariant=false"])) == {
        "dtype": "bfloat16", "batch_invariant": False}  # fmt: skip
    server = compose(["backend=openai", "backend.base_url=http://127.0.0.1:9/v1"])
    assert backend_compute(server) == {"dtype": None, "batch_invariant": False}


def test_fp32_and_bf16_never_share_an_answer(compose, tmp_path):
    from eatlab.llm.factory import backend_identity, build_client

    conv = [[{"role": "user", "content": "Translate: Berlin"}]]
    settings = GenerationSettings(max_new_tokens=3)
    cache = f"cache.path={tmp_path / 'c.sqlite'}"
    fp32 = compose([cache, "backend.dtype=float32"])
    bf16 = compose([cache, "backend.dtype=bfloat16"])
    auto = compose([cache, "backend.device=cpu"])  # auto on the CPU computes in fp32: the same key as float32
    k32, k16 = backend_identity(fp32)[1], backend_identity(bf16)[1]
    assert (
        "+dtype" not in k32
        and k16 == k32 + "+dtype:bfloat16+batch_invariant"
        and backend_identity(auto)[1] == k32
    )
    first = build_client(fp32)
    first.chat(conv, settings)
    other = build_client(bf16)
    other.chat(conv, settings)
    assert other.counters["forward"].llm_calls == 1 and other.counters["forward"].llm_cache_hits == 0
    assert other.backend.model_key == k16 and first.backend.model_key == k32  # built backends say the same
    again = build_client(fp32)
    again.chat(conv, settings)
    assert again.counters["forward"].llm_cache_hits == 1 and not again.backend_created


def test_hub_keys_of_fp32_runs_are_unchanged(compose):
    """Keys made before the dtype entered the key stay valid: the shared transcripts' model on the CPU."""
    from eatlab.llm.factory import backend_identity

    cfg = compose(["model=qwen2.5-coder-0.5b-instruct-q4km", "backend.device=cpu"])
    assert backend_identity(cfg) == ("hf", "qwen2.5-coder-0.5b-instruct-q4km")
    cfg = compose(["experiment=replay_transcripts"])  # pinned to the precision the transcripts were made in
    assert backend_identity(cfg) == ("hf", "qwen2.5-coder-0.5b-instruct-q4km")


# ------------------------------------------------------------------------------------------------ model.path
@pytest.fixture
def real_weights(compose, tmp_path) -> Path:
    """The tiny model copied as "real" weights: no SMOKE_MODEL marker, no smoke README."""
    from eatlab.llm.factory import model_source

    smoke, _ = model_source(compose([]))
    dst = tmp_path / "DIR" / "hf"
    shutil.copytree(smoke, dst, ignore=shutil.ignore_patterns("SMOKE_MODEL", "README.md"))
    return dst


def test_model_path_names_these_weights_with_any_model_group(compose, real_weights):
    from eatlab.llm.factory import backend_identity, run_model

    for group in ("tiny", "qwen2.5-7b"):
        cfg = compose([f"model={group}", f"model.path={real_weights}"])
        spec = run_model(cfg)
        assert spec.source == str(real_weights) and spec.local and not spec.smoke
        assert backend_identity(cfg)[1].startswith(("hf@local:", "Qwen/Qwen2.5-7B-Instruct@local:"))
    assert not (real_weights / "SMOKE_MODEL").exists()  # nothing written into the user's folder


@pytest.mark.slow
def test_the_readme_real_model_line_runs(compose, tmp_path, real_weights):
    """`eatlab model.path=DIR/hf language=zh data.limit=8` (here 2 sentences, short answers)."""
    cfg = compose([f"model.path={real_weights}", "language=zh", "data.limit=2", "generation.max_new_tokens=4",
                   "extractor=spacy"])  # fmt: skip
    m = run_eat(cfg, tmp_path / "run")
    assert m["run"]["model"] == "hf" and m["run"]["smoke_model"] is False and m["llm_calls"] > 0
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text(encoding="utf-8"))
    assert prov["model_key"].startswith("hf@local:")


def test_a_missing_model_path_is_one_line_and_creates_nothing(compose, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "model"
    for group in ("tiny", "qwen2.5-7b"):
        cfg = compose([f"model={group}", f"model.path={missing}", "data.limit=1", "extractor=spacy"])
        with pytest.raises(SystemExit) as exit_:
            run_task(eat_task, cfg, "config", "eat")
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"error: model.path={missing}: no such file or folder (model.path names existing weights)"
        )
        assert not missing.parent.exists()


def test_only_a_smoke_group_without_a_path_builds_the_smoke_model(compose, tmp_path):
    from eatlab.llm.factory import run_model

    spec = run_model(compose(["model=tiny", f"model.smoke_path={tmp_path / 'smoke'}"]))
    assert (
        spec.smoke
        and spec.source == str(tmp_path / "smoke")
        and (tmp_path / "smoke" / "SMOKE_MODEL").is_file()
    )
    hub = run_model(compose(["model=qwen2.5-7b"]))
    assert not hub.local and hub.source == "Qwen/Qwen2.5-7B-Instruct" and not hub.smoke
