"""Does xgrammar (vLLM's default structured-outputs engine) read the servers' GBNF and accept exactly its answers?

    .venv/bin/pip install -c constraints.txt --target /tmp/xgr xgrammar   # outside the venv: not a dependency
    XGRAMMAR_DIR=/tmp/xgr .venv/bin/python experiments/grammar_engine/xgrammar_check.py

Every grammar of 78 WikiANN test sentences (6 per language, 13 languages) and two odd ones is compiled; on the first
40, every substring of at most 30 characters, with and without one leading space, is fed as a string and then the
stop token, and acceptance is compared with the grammar's language (`substring_answers`, leading space optional).
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.append(os.environ.get("XGRAMMAR_DIR", "/tmp/xgr"))  # after the venv: its torch and transformers win
sys.path.insert(0, str(Path(__file__).resolve().parent))

import xgrammar as xgr  # noqa: E402
from measure import EOS, LANGS, qwen_tokenizer  # noqa: E402

from eatlab.data.loader import select_sentences  # noqa: E402
from eatlab.llm.grammar import substring_answers, substring_gbnf  # noqa: E402


def main() -> None:
    texts = [s.text for lang in LANGS for s in select_sentences(lang, "test", limit=6).sentences]
    texts += ["'", 'a "q" \\ b\n\t']
    for t in texts:
        xgr.Grammar.from_ebnf(substring_gbnf(t))  # raises on a grammar it cannot read
    tok = qwen_tokenizer()
    compiler = xgr.GrammarCompiler(
        xgr.TokenizerInfo.from_huggingface(tok, vocab_size=151936, stop_token_ids=EOS)
    )
    tried = wrong = 0
    for t in texts[:40]:
        compiled = compiler.compile_grammar(substring_gbnf(t))
        answers = substring_answers(t)
        want = answers | {" " + a for a in answers} if answers else {""}
        subs = {t[i:j] for i in range(len(t)) for j in range(i + 1, min(len(t), i + 30) + 1) if t[i] != " "}
        for s in subs | {" " + s for s in subs}:
            m = xgr.GrammarMatcher(compiled)
            accepted = m.accept_string(s) and m.accept_token(EOS[1])
            tried += 1
            wrong += accepted != (s in want)
    print(
        f"xgrammar {version('xgrammar')}: {len(texts)} grammars read; {tried} replies tried, {wrong} accepted wrongly"
    )


if __name__ == "__main__":
    main()
