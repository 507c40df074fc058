"""Languages: a run's language is its composed `language` node (`Language.from_config(cfg)`); nothing in a run
reads the package's conf/ again, so an overridden key (`language.name=Klingon`) or a language file of one's own
on the Hydra search path is what runs and what is recorded.

`get_language(code)` reads the shipped table (conf/language/<code>.yaml) for tools that have a language code but
no composed config: `eatlab-score --language`, the analysis of old run dirs, the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import yaml
from omegaconf import OmegaConf

from eatlab.errors import ConfigError
from eatlab.paths import CONF_DIR

NSL_CODES = ("ar", "hi", "hy", "ja", "ka", "ko", "ru", "zh")
LSL_CODES = ("de", "es", "fr", "nl")
ALL_CODES = ("en", *NSL_CODES, *LSL_CODES)


@dataclass(frozen=True)
class Language:
    code: str
    name: str  # English name, used in prompts
    script: str
    char_tokenized: bool  # WikiANN tokenizes one character per token ('#' = space)
    spaceless: bool  # the script is written without spaces between words
    cased: bool  # the script has letter case (matching is then case-insensitive)
    nsl: bool  # non-Latin-script target language of the paper
    sacrebleu_tokenizer: str
    redirect_words: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_config(cls, cfg) -> Language:
        """The run's language: the composed config's `language` node."""
        node = cfg.get("language") if hasattr(cfg, "get") else None
        if node is None:
            raise ConfigError("language: missing in the config (choose one with language=<code>)")
        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        return cls.from_mapping(node)

    @classmethod
    def from_mapping(cls, d) -> Language:
        try:
            return cls(
                code=str(d["code"]),
                name=str(d["name"]),
                script=str(d["script"]),
                char_tokenized=bool(d["char_tokenized"]),
                spaceless=bool(d["spaceless"]),
                cased=bool(d["cased"]),
                nsl=bool(d["nsl"]),
                sacrebleu_tokenizer=str(d["sacrebleu_tokenizer"]),
                redirect_words=tuple(d.get("redirect_words") or ()),
            )
        except KeyError as exc:
            raise ConfigError(f"language.{exc.args[0]}: missing in the language config") from None


@cache
def get_language(code: str) -> Language:
    """The shipped language `code` (conf/language/<code>.yaml), for tools without a composed config; ConfigError
    for an unknown code. A run uses `Language.from_config(cfg)` instead."""
    path = CONF_DIR / "language" / f"{code}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (CONF_DIR / "language").glob("*.yaml")))
        raise ConfigError(f"language={code}: unknown language (known: {known})")
    return Language.from_mapping(yaml.safe_load(path.read_text(encoding="utf-8")))


def is_char_tokenized(code: str) -> bool:
    """zh/ja in WikiANN; unknown codes (e.g. 'xx' in tests) are word-tokenized."""
    try:
        return get_language(code).char_tokenized
    except ConfigError:
        return False
