"""`eatlab-bench`: batched vs one-conversation-at-a-time greedy generation with the tiny smoke model, cache off.

64 real WikiANN sentences (8 from each of the 8 non-Latin-script languages, in-repo samples; or the first 64 of
any CoNLL file given with --data) go through the reference release's 3-round forward conversation twice: once with
each round of all conversations batched, once one conversation at a time as the reference release runs it. The
replies must be identical; the command prints both timings and ends with `speedup: <ratio>x`.

What bounds the ratio: the tiny model's hidden size is 64 but its vocabulary has 151,936 entries, so every
generated token costs a vocabulary-wide projection, an exact entropy and an argmax per row, which batching cannot
share; what batching shares is the per-step Python overhead and the read of the 39 MB output projection. The
ratio is therefore far below the batch size, and it moves with the machine's load: with other processes on the
same cores, one-at-a-time decoding (many tiny multi-threaded operations) suffers much more than batched decoding.
`--threads 1` gives the steadiest numbers; the load average is printed with the timings.

`--constraint` adds what the substring constraint costs per decoding step: one batched call per sentence asking to
copy a name from it, decoded free and then constrained to a substring of the sentence (same budget, greedy),
with the time of a decoding step and of the constraint's mask in it.

`eatlab-bench --timings` instead times what the tests deliberately do not assert on (a test checks counts and
behaviour, never wall time): the bootstrap CI on 10k sentences x 1000 resamples (target 2 s), a 16-sentence tiny
pipeline run, cold then from the cache (target 60 s cold), and full runs against the HTTP fault server with
transient faults and with the server going away mid-run (target 60 s each). Each line ends `ok` or `SLOW`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from eatlab.errors import EatlabError
from eatlab.llm.base import Conversation, GenerationSettings
from eatlab.llm.cache import ResponseCache
from eatlab.llm.client import LLMClient
from eatlab.llm.conversation import run_conversations, scripted

NSL = ("ar", "hi", "hy", "ja", "ka", "ko", "ru", "zh")
ENTITY_TYPES = "LOCATION, PERSON, ORGANIZATION"
ENTITY_TYPES_BRACKETED = "[LOCATION], [PERSON], [ORGANIZATION]"


def load_sentences(data: Path | None, lang: str | None, n: int) -> list[tuple[str, str]]:
    """(language code, sentence text) pairs: the in-repo samples, or the first n sentences of a CoNLL file."""
    from eatlab.data.conll import read_conll

    if data is not None:
        code = lang or "xx"
        char_tok = None
        if lang:
            from eatlab.data.languages import get_language

            char_tok = get_language(lang).char_tokenized
        return [(code, s.text) for s in read_conll(data, code, "test", char_tok)[:n]]
    from eatlab.data.loader import select_sentences

    per_lang = max(1, -(-n // len(NSL)))
    out = []
    for code in NSL:
        out += [(code, s.text) for s in select_sentences(code, "test", limit=per_lang).sentences]
    return out[:n]


def forward_script() -> dict:
    from eatlab.paths import PROMPTS_DIR

    return yaml.safe_load((PROMPTS_DIR / "reference.yaml").read_text(encoding="utf-8"))


def build_conversations(items: list[tuple[str, str]]) -> tuple[list[Conversation], list[list[str]]]:
    """Prefixes (system + scripted preamble) and user rounds[k][i] of the reference forward script."""
    from eatlab.data.languages import get_language

    script = forward_script()
    prefixes, rounds = [], [[] for _ in script["forward"]["rounds"]]
    for code, text in items:
        name = get_language(code).name if code != "xx" else "source-language"
        fill = {"language": name, "entity_types": ENTITY_TYPES, "entity_types_bracketed": ENTITY_TYPES_BRACKETED,
                "sentence": text}  # fmt: skip
        conv = [{"role": "system", "content": script["system"]}]
        conv += [
            {"role": m["role"], "content": m["content"].format(**fill)} for m in script["forward"]["preamble"]
        ]
        prefixes.append(conv)
        for k, r in enumerate(script["forward"]["rounds"]):
            rounds[k].append(r.format(**fill))
    return prefixes, rounds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eatlab-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64, help="number of sentences (default 64)")
    p.add_argument("--data", type=Path, default=None, help="a CoNLL file instead of the in-repo samples")
    p.add_argument("--lang", default=None, help="language code of --data (e.g. zh)")
    p.add_argument("--max-new-tokens", default="32,32,16", help="per-round budgets (default 32,32,16)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    default_dir = Path(os.environ.get("EATLAB_OUTPUTS") or "outputs") / "models" / "tiny-qwen2"
    p.add_argument(
        "--model-dir",
        type=Path,
        default=default_dir,
        help="any HF chat model folder (default: the tiny smoke model, built there on first use)",
    )
    p.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on GPU) | float32 | bfloat16"
    )
    p.add_argument(
        "--no-batch-invariant",
        action="store_true",
        help="half precision: let a reply depend on its batch (backend.batch_invariant=false); faster, inexact",
    )
    p.add_argument(
        "--constraint",
        action="store_true",
        help="also time a decoding step free vs constrained to a substring of the sentence (the mask's cost)",
    )
    p.add_argument(
        "--timings",
        action="store_true",
        help="instead: time the bootstrap, a tiny pipeline run and the HTTP fault runs against their targets",
    )
    args = p.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        return run_timings(args) if args.timings else run(args)
    except EatlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # callers in the same process (tests) keep their setting


MODES = (("one at a time", False, False), ("batched", True, False), ("batched + prefix reuse", True, True))


def unique_prompt_tokens(prompts: list[list[int]]) -> int:
    """The fewest prompt tokens any engine must compute for these prompts: each shared prefix once (the number
    of nodes of their token trie)."""
    root: dict = {}
    n = 0
    for ids in prompts:
        node = root
        for t in ids:
            if t not in node:
                node[t] = {}
                n += 1
            node = node[t]
    return n


def run(args) -> int:
    import torch

    from eatlab.llm.hf import HFBackend
    from eatlab.llm.tiny import MARKER, ensure_tiny_model

    budgets = [int(x) for x in args.max_new_tokens.split(",")]
    items = load_sentences(args.data, args.lang, args.n)
    prefixes, rounds = build_conversations(items)
    if len(budgets) != len(rounds):
        print(f"error: --max-new-tokens needs {len(rounds)} values", file=sys.stderr)
        return 2
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file() or (model_dir / MARKER).is_file():
        model_dir = ensure_tiny_model(model_dir)  # the default: the tiny smoke model, built on first use
    smoke = (model_dir / MARKER).is_file()
    backend = HFBackend(
        model_dir,
        batch_size=args.batch_size,
        token_budget=1 << 30,
        dtype=args.dtype,
        batch_invariant=not args.no_batch_invariant,
    )
    backend.load()
    print(f"model: {model_dir}" + (" (SMOKE model, random weights: outputs mean nothing)" if smoke else ""))
    print(f"{len(items)} sentences x {len(rounds)} rounds, max_new_tokens {budgets}, greedy, cache off, "
          f"{torch.get_num_threads()} torch threads, device {next(backend._model.parameters()).device}, "
          f"{next(backend._model.parameters()).dtype}"
          + (", batch-invariant" if backend._lm.min_rows > 1 else ""))  # fmt: skip
    # warm-up (first-call overheads are not generation)
    LLMClient(backend, ResponseCache(mode="off")).chat([prefixes[0] + [{"role": "user", "content": "hi"}]],
                                                       GenerationSettings(max_new_tokens=2))  # fmt: skip
    direction, values = scripted(rounds, budgets)
    texts, seconds, rows, per_round, breakdown = {}, {}, [], {}, {}
    generate = backend.generate

    def timed_generate(conversations, settings):  # one call = one round (batched) or one conversation's round
        before, computed = dict(backend.seconds), backend.prompt_tokens_computed
        steps = backend.decode_steps, backend.decode_row_steps
        t0 = time.perf_counter()
        replies = generate(conversations, settings)
        k = (len(conversations[0]) - len(prefixes[0]) - 1) // 2  # user turns before this one
        row = per_round.setdefault(k, [0.0, 0.0, 0.0, 0, 0, 0, 0])
        row[0] += time.perf_counter() - t0
        row[1] += backend.seconds["prefill"] - before["prefill"]
        row[2] += backend.seconds["decode"] - before["decode"]
        row[3] += backend.prompt_tokens_computed - computed
        row[4] += sum(r.completion_tokens for r in replies)
        row[5] += backend.decode_steps - steps[0]
        row[6] += backend.decode_row_steps - steps[1]
        return replies

    backend.generate = timed_generate
    for name, batched, reuse in MODES:
        per_round.clear()
        backend.batch_size = args.batch_size if batched else 1
        backend.prefix_reuse = reuse
        backend.prefix_cache.clear()
        backend.prompt_tokens_computed = backend.padding_tokens_computed = 0
        client = LLMClient(backend, ResponseCache(mode="off"))
        t0 = time.perf_counter()
        if batched:
            results = run_conversations(client, prefixes, direction, values, {}, "bench")
        else:
            results = [run_conversations(client, [p], direction, [v], {}, "bench")[0]
                       for p, v in zip(prefixes, values, strict=True)]  # fmt: skip
        seconds[name] = time.perf_counter() - t0
        texts[name] = [[r.text for r in res.replies] for res in results]
        c = client.counters["bench"]
        rows.append(
            (
                name,
                seconds[name],
                backend.prompt_tokens_computed,
                c.prompt_tokens,
                c.completion_tokens,
                backend.padding_tokens_computed,
            )  # fmt: skip
        )
        if reuse:  # where the time goes with prefix reuse, per round
            breakdown = {k: list(v) for k, v in sorted(per_round.items())}
    backend.generate = generate
    prompts = [backend.encode(res.messages[: 2 * k + len(prefixes[i]) + 1])
               for i, res in enumerate(results) for k in range(len(res.replies))]  # fmt: skip
    print(f"{'mode':<24} {'seconds':>8} {'prompt tokens computed':>23} {'of sent':>8} {'generated':>10} "
          f"{'padding computed':>17}")  # fmt: skip
    for name, secs, computed, sent, gen, padding in rows:
        print(f"{name:<24} {secs:>8.2f} {computed:>23,} {sent:>8,} {gen:>10,} {padding:>17,}")
    print(
        "with prefix reuse, per round: seconds (prefill + decode), prompt tokens computed, tokens generated"
    )
    for k, (secs, pre, dec, computed, gen, steps, row_steps) in breakdown.items():
        print(f"  round {k + 1}: {secs:.2f} s ({pre:.2f} + {dec:.2f}), {computed:,} computed, {gen:,} generated, "
              f"{1000 * dec / max(gen, 1):.1f} ms of decoding per generated token, "
              f"{row_steps:,} rows decoded in {steps:,} steps")  # fmt: skip
    print(
        f"unique prompt tokens (each shared prefix once; answer tokens kept from decoding need none): "
        f"{unique_prompt_tokens(prompts):,}"
    )
    if args.constraint:
        for line in constraint_cost(backend, prefixes, items, budgets[-1], args.batch_size):
            print(line)
    base = texts[MODES[0][0]]
    same = {name: sum(a == b for x, y in zip(base, t, strict=True) for a, b in zip(x, y, strict=True))
            for name, t in texts.items()}  # fmt: skip
    total = sum(len(x) for x in base)
    for name, n in same.items():
        if name != MODES[0][0]:
            print(
                f"replies identical to one at a time ({name}): {n}/{total}"
                + ("" if n == total else "  DIFFER")
            )
    print(
        f"the reference release's own settings on these sentences (one at a time, no reuse, {len(rounds)} rounds "
        f"of 512 new tokens, sampled): at least {rows[0][2]:,} prompt tokens computed (more, as its longer "
        f"answers are repeated in later rounds) and up to {len(items) * len(rounds) * 512:,} generated"
    )
    best = min(seconds[m[0]] for m in MODES[1:])
    print(f"speedup: {seconds[MODES[0][0]] / best:.1f}x")
    return 0 if all(n == total for n in same.values()) else 1


def constraint_cost(backend, prefixes, items, budget: int, batch_size: int) -> list[str]:
    """Lines comparing a decoding step free and constrained to a substring of the sentence (one batched call each,
    greedy, prefix reuse on): time per step, the mask's share, rows per step."""
    convs = [p + [{"role": "user", "content": f"Copy one name from this sentence, exactly as written: {text}"}]
             for p, (_, text) in zip(prefixes, items, strict=True)]  # fmt: skip
    backend.batch_size, backend.prefix_reuse = batch_size, True
    # warm-up: the prompts' states (both runs reuse them) and the tokenizer's byte table (built once per process)
    backend.generate(convs, [GenerationSettings(max_new_tokens=1, substring_of=t) for _, t in items])
    lines = [f"constraint cost ({len(convs)} rows, batch {batch_size}, max_new_tokens {budget}, greedy):"]
    for name, settings in (
        ("free", GenerationSettings(max_new_tokens=budget)),
        ("constrained", [GenerationSettings(max_new_tokens=budget, substring_of=t) for _, t in items]),
    ):
        before = (dict(backend.seconds), backend.decode_steps, backend.decode_row_steps)
        replies = backend.generate(convs, settings)
        dec = backend.seconds["decode"] - before[0]["decode"]
        mask = backend.seconds["constrain"] - before[0]["constrain"]
        steps = max(backend.decode_steps - before[1], 1)
        row_steps = backend.decode_row_steps - before[2]
        lines.append(
            f"  {name}: {1000 * dec / steps:.1f} ms per decoding step, of which the constraint's mask "
            f"{1000 * mask / steps:.1f} ms; {steps} steps, {row_steps / steps:.1f} rows per step, "
            f"{sum(r.completion_tokens for r in replies):,} tokens generated"
        )
    return lines


def _timed(fn) -> float:
    """Wall seconds of fn(); what it prints (a run's summary) is dropped."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def _compose(tmp: Path, model_dir: Path, name: str, overrides: list[str]):
    """The main config, outputs and cache under `tmp/name`, W&B off, the tiny model from `model_dir`."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from eatlab.paths import CONF_DIR

    base = [f"paths.output_dir={tmp / 'outputs'}", f"paths.run_dir={tmp / name}",
            f"paths.models_dir={model_dir.parent}", "tracking=none"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=base + overrides)
    OmegaConf.resolve(cfg)
    return cfg


def _time_bootstrap() -> float:
    import numpy as np

    from eatlab.eval.bootstrap import bootstrap_f1_ci
    from eatlab.eval.entity import EntityCounts

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 10_000)
    pred = rng.integers(0, 4, 10_000)
    tp = np.minimum(gold, pred)
    counts = EntityCounts(("PER",), tp.reshape(-1, 1), pred.reshape(-1, 1), gold.reshape(-1, 1))
    return _timed(lambda: bootstrap_f1_ci(counts, n_boot=1000, seed=0))


def _time_pipeline(tmp: Path, model_dir: Path) -> tuple[float, float]:
    from eatlab.cli.run import run_eat

    cfg = _compose(tmp, model_dir, "pipeline", ["language=zh", "data.limit=16"])
    cold = _timed(lambda: run_eat(cfg, tmp / "pipeline"))
    warm = _timed(lambda: run_eat(cfg, tmp / "pipeline-again"))
    return cold, warm


def _time_http_faults(tmp: Path, model_dir: Path) -> tuple[float, float]:
    """tests/test_reliability_http.py's transient-fault and server-gone runs (8 zh sentences, LLM extractor)."""
    from eatlab.cli.run import run_eat
    from eatlab.data.loader import select_sentences
    from eatlab.testing.fault_server import HTTP_FAULTS, FaultRule, FaultServer, OracleModel

    sentences = select_sentences("zh", "test", limit=8).sentences
    oracle = OracleModel.from_sentences(sentences)

    def overrides(srv: FaultServer, name: str, *extra: str) -> list[str]:
        return ["language=zh", "data.limit=8", "extractor=llm", "backend=openai", f"backend.base_url={srv.base_url}",
                "backend.concurrency=4", "backend.max_retries=2", "backend.backoff_s=0.01", "backend.timeout_s=2",
                f"cache.path={tmp / name / 'cache.sqlite'}", *extra]  # fmt: skip

    slow = {oracle.english(sentences[0].text), oracle.english(sentences[1].text)}
    rules = [
        FaultRule("timeout", when=lambda r: r.stage == "ner" and r.sentence in slow, attempts=1, delay_s=1.5)
    ]
    kinds = [k for k in HTTP_FAULTS if k != "timeout"]
    rules += [
        FaultRule(k, when=lambda r, i=i: int(r.body_sha, 16) % 8 == i, attempts=1)
        for i, k in enumerate(kinds)
    ]
    with FaultServer(oracle, rules) as srv:
        cfg = _compose(tmp, model_dir, "transient", overrides(srv, "transient", "backend.timeout_s=0.5"))
        transient = _timed(lambda: run_eat(cfg, tmp / "transient"))
    with FaultServer(oracle, shutdown_after=30) as srv:
        cfg = _compose(tmp, model_dir, "gone", overrides(srv, "gone", "backend.backoff_s=0.05"))
        gone = _timed(lambda: run_eat(cfg, tmp / "gone"))
    return transient, gone


def run_timings(args) -> int:
    """Wall times against their targets; prints `ok` or `SLOW` per line (exit 0 either way: timings vary)."""
    import logging
    import tempfile

    logging.getLogger("eatlab").setLevel(logging.ERROR)  # the fault runs log every retry
    rows = [("bootstrap CI, 10k sentences x 1000 resamples", _time_bootstrap(), 2.0)]
    with tempfile.TemporaryDirectory(prefix="eatlab-bench-") as tmp:
        cold, warm = _time_pipeline(Path(tmp), args.model_dir)
        rows += [("tiny pipeline, zh, 16 sentences, cold", cold, 60.0),
                 ("tiny pipeline, zh, 16 sentences, from the cache", warm, 60.0)]  # fmt: skip
        transient, gone = _time_http_faults(Path(tmp), args.model_dir)
        rows += [("HTTP backend, every transient fault kind, 8 sentences", transient, 60.0),
                 ("HTTP backend, server gone after 30 requests, 8 sentences", gone, 60.0)]  # fmt: skip
    for name, seconds, target in rows:
        print(f"{name}: {seconds:.2f}s (target < {target:.0f}s) {'ok' if seconds < target else 'SLOW'}")
    if hasattr(os, "getloadavg"):
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
