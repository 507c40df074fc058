"""The transformers backend on the tiny smoke model: batching is exact, entropies are the raw distribution's,
seeded sampling is independent of batch composition, adapters change the cache identity."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest

from eatlab.errors import ConfigError
from eatlab.llm.base import GenerationSettings
from eatlab.llm.cache import ResponseCache
from eatlab.llm.client import LLMClient
from eatlab.llm.conversation import run_conversations, scripted
from eatlab.llm.hf import HFBackend
from eatlab.llm.tiny import MARKER, TINY_VERSION, ensure_tiny_model

TINY_DIR = Path(tempfile.gettempdir()) / "eatlab-tests" / f"tiny-qwen2-v{TINY_VERSION}"

SENTENCES = [
    "前鎮區",
    "東京都 に 住む",
    "Москва — столица России",
    "서울의 인구",
    "القاهرة عاصمة مصر",
    "नई दिल्ली भारत की राजधानी है",
    "თბილისი",
    "Երևան",
]


def convs(texts=SENTENCES):
    return [
        [
            {"role": "system", "content": "You are a translator."},
            {"role": "user", "content": f"Translate: {t}"},
        ]
        for t in texts
    ]


@pytest.fixture(scope="module")
def tiny() -> Path:
    return ensure_tiny_model(TINY_DIR)


@pytest.fixture(scope="module")
def backend(tiny) -> HFBackend:
    b = HFBackend(tiny, batch_size=8)
    b.load()
    return b


def test_tiny_model_is_labelled_smoke(tiny):
    assert (tiny / MARKER).is_file()
    assert "SMOKE" in (tiny / "README.md").read_text()
    assert ensure_tiny_model(tiny) == tiny  # built once, reused


def test_backend_loads_lazily(tiny):
    b = HFBackend(tiny)
    assert not b.loaded
    assert b.model_key.startswith(f"{tiny.name}@local:")  # the folder's name, never its absolute path
    assert b.model_key == HFBackend(tiny).model_key
    assert HFBackend(tiny, model_id="eatlab/tiny-qwen2-smoke").model_key.startswith(
        "eatlab/tiny-qwen2-smoke@local:"
    )


def test_chat_template_and_token_counts(backend):
    conv = convs()[:1]
    ids = backend.encode(conv[0])
    text = backend._tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a translator.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n")
    (r,) = backend.generate(conv, GenerationSettings(max_new_tokens=5))
    assert r.prompt_tokens == len(ids)
    assert 1 <= r.completion_tokens <= 5
    assert len(r.entropies) == r.completion_tokens
    assert r.finish_reason in ("stop", "length")
    assert not r.entropy_approx
    assert all(0.0 <= h <= math.log(151936) + 1e-3 for h in r.entropies)


def _replies(results) -> list[list]:
    """replies[k][i] of run_conversations' results."""
    return [[r.replies[k] for r in results] for k in range(len(results[0].replies))]


def test_batched_equals_one_at_a_time_over_rounds(backend):
    """Two rounds over 8 multilingual conversations: batched (left-padded) and single give identical replies."""
    settings = [GenerationSettings(max_new_tokens=10), GenerationSettings(max_new_tokens=6)]
    rounds = [[f"Translate: {t}" for t in SENTENCES], ["Give me the final result without other words."] * 8]
    prefixes = [[{"role": "system", "content": "You are a translator."}] for _ in SENTENCES]
    backend.batch_size = 8
    direction, values = scripted(rounds, [s.max_new_tokens for s in settings])
    batched = _replies(run_conversations(LLMClient(backend), prefixes, direction, values, {}, "forward"))
    backend.batch_size = 1
    try:
        single = [_replies(run_conversations(LLMClient(backend), [p], direction, [values[i]], {}, "forward"))
                  for i, p in enumerate(prefixes)]  # fmt: skip
    finally:
        backend.batch_size = 8
    for k in range(2):
        for i in range(8):
            a, b = batched[k][i], single[i][k][0]
            assert a.text == b.text
            assert a.completion_tokens == b.completion_tokens
            assert a.entropies == pytest.approx(b.entropies, abs=1e-3)


def test_batches_respect_size_and_token_budget(tiny):
    b = HFBackend(tiny, batch_size=3, token_budget=100)
    lengths = [10, 50, 20, 30, 40, 5, 70]
    batches = b.batches(lengths, max_new_tokens=10)
    assert sorted(i for batch in batches for i in batch) == list(range(7))
    for batch in batches:
        assert len(batch) <= 3
        width = max(lengths[i] for i in batch) + 10
        assert len(batch) == 1 or len(batch) * width <= 100
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat, reverse=True)  # longest first: little padding


def test_several_batches_log_their_progress(backend, monkeypatch, caplog):
    """A call of several batches says how far it is (the last line: all answered); one batch logs nothing."""
    import logging

    monkeypatch.setattr(backend, "batch_size", 2)
    with caplog.at_level(logging.INFO, logger="eatlab.llm.hf"):
        backend.generate(convs()[:5], GenerationSettings(max_new_tokens=2))
    lines = [r.getMessage() for r in caplog.records if "conversations answered" in r.getMessage()]
    assert lines and lines[-1].startswith(f"hf {backend.model_id}: 5/5 conversations answered (")
    caplog.clear()
    monkeypatch.setattr(backend, "batch_size", 8)
    with caplog.at_level(logging.INFO, logger="eatlab.llm.hf"):
        backend.generate(convs()[:5], GenerationSettings(max_new_tokens=2))
    assert not [r for r in caplog.records if "conversations answered" in r.getMessage()]


def test_entropy_is_of_the_raw_distribution(backend):
    """Temperature and top-k change the sampling, not the recorded entropy of the model's distribution."""
    conv = convs()[:2]
    greedy = backend.generate(conv, GenerationSettings(max_new_tokens=1))
    sampled = backend.generate(
        conv, GenerationSettings(max_new_tokens=1, do_sample=True, temperature=0.3, top_k=5, seed=1)
    )
    for g, s in zip(greedy, sampled, strict=True):
        assert g.entropies[0] == pytest.approx(s.entropies[0], abs=1e-4)


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_and_batch_independent(backend):
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.8, top_k=20,
                                  repetition_penalty=1.05, seed=7)  # fmt: skip
    all_convs = convs()
    together = backend.generate(all_convs, settings)
    alone = backend.generate(all_convs[3:4], settings)
    again = backend.generate(all_convs, settings)
    assert [r.text for r in together] == [r.text for r in again]
    assert together[3].text == alone[0].text
    other = backend.generate(all_convs, GenerationSettings(**{**settings.__dict__, "seed": 8}))
    assert [r.text for r in other] != [r.text for r in together]


def test_repetition_penalty_changes_greedy_output(backend):
    conv = convs()[:4]
    plain = backend.generate(conv, GenerationSettings(max_new_tokens=12))
    penalised = backend.generate(conv, GenerationSettings(max_new_tokens=12, repetition_penalty=2.0))
    assert [r.text for r in plain] != [r.text for r in penalised]


@pytest.mark.slow
def test_adapter_enters_model_key_and_generates(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    base = HFBackend(tiny)
    tuned = HFBackend(tiny, adapter_path=tmp_path / "adapter")
    assert tuned.model_key.startswith(base.model_key + "+adapter:")
    (r,) = tuned.generate(convs()[:1], GenerationSettings(max_new_tokens=3))
    assert r.completion_tokens >= 1
    with pytest.raises(ConfigError, match="adapter_path"):
        HFBackend(tiny, adapter_path=tmp_path / "missing")


def test_an_adapter_on_full_weights_is_merged_into_them(tiny, tmp_path):
    """Unquantised, the adapter is folded into the base weights: no LoRA layer is left, and the logits are the
    unmerged adapter's (random, non-zero B, so the adapter changes them)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from eatlab.llm.hf_load import load_model

    torch.manual_seed(0)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny)), cfg).save_pretrained(str(tmp_path / "a"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()
    ids = torch.tensor([[1, 20, 300, 4000, 50]])
    with torch.no_grad():
        plain = base(ids).logits
        unmerged = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()(ids).logits
        model = load_model(
            str(tiny), device="cpu", dtype=torch.float32, adapter_path=str(tmp_path / "a")
        ).model
        merged = model(ids).logits
    assert not any("lora_" in name for name, _ in model.named_parameters())
    assert not torch.allclose(unmerged, plain, atol=1e-3)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_the_client_logs_how_far_a_set_of_several_chunks_is(tiny, tmp_path, caplog):
    """The pipeline's client hands the backend one batch at a time, so the client says how far the set is."""
    import logging

    client = LLMClient(HFBackend(tiny, batch_size=2), ResponseCache(tmp_path / "c.sqlite"))
    with caplog.at_level(logging.INFO, logger="eatlab.llm.client"):
        client.chat(convs()[:5], GenerationSettings(max_new_tokens=2), stage="backward")
    lines = [r.getMessage().split(" (")[:2] for r in caplog.records if "requests answered" in r.getMessage()]
    model = client.backend.model_id
    assert lines[-1] == [f"hf {model}", "backward): 5/5 requests answered"]
    one = LLMClient(HFBackend(tiny, batch_size=8), ResponseCache(tmp_path / "d.sqlite"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eatlab.llm.client"):
        one.chat(convs()[:5], GenerationSettings(max_new_tokens=2))
    assert not [r for r in caplog.records if "requests answered" in r.getMessage()]  # one chunk: nothing new


def test_fully_cached_run_loads_no_weights(tiny, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    settings = GenerationSettings(max_new_tokens=4)
    first = LLMClient(HFBackend(tiny), cache)
    want = first.chat(convs(), settings)
    fresh = HFBackend(tiny)
    second = LLMClient(fresh, cache)
    got = second.chat(convs(), settings)
    assert [r.text for r in got] == [r.text for r in want]
    assert all(r.cached for r in got)
    assert second.counters["forward"].llm_calls == 0
    assert second.counters["forward"].llm_cache_hits == len(SENTENCES)
    assert not fresh.loaded


@pytest.mark.slow
def test_bench_command_runs_and_reports(tiny, capsys):
    from eatlab.cli.bench import main as bench_main

    assert (
        bench_main(
            [
                "--n",
                "4",
                "--max-new-tokens",
                "3,3,2",
                "--model-dir",
                str(tiny),
                "--threads",
                "1",
                "--constraint",
            ]
        )
        == 0  # fmt: skip
    )
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert "replies identical to one at a time (batched): 12/12" in lines
    assert "replies identical to one at a time (batched + prefix reuse): 12/12" in lines
    rows = {ln[:24].strip(): ln[24:].split() for ln in lines if ln.startswith(("one at a time ", "batched"))}
    single, batched, reused = (int(rows[m][1].replace(",", "")) for m in
                               ("one at a time", "batched", "batched + prefix reuse"))  # fmt: skip
    assert reused < single <= batched  # prompt tokens computed: reuse computes the fewest
    assert [ln.split(":")[0] for ln in lines if ln.startswith("  round ")] == [
        "  round 1",
        "  round 2",
        "  round 3",
    ]
    assert lines[-1].startswith("speedup: ") and lines[-1].endswith("x")
    cost = [ln.split(":")[0] for ln in lines if ln.startswith("  free:") or ln.startswith("  constrained:")]
    assert cost == ["  free", "  constrained"]  # --constraint: a decoding step free vs constrained


REUSE_SENTENCES = [
    "北京是中国的首都。",
    "Angela Merkel besuchte Paris.",
    "Путин посетил Берлин.",
    "서울의 날씨",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "prompt_file,rounds",
    [pytest.param("eatlab_v1.yaml", r, marks=[] if r == 3 else [pytest.mark.slow]) for r in (1, 2, 3, 4, 5)]
    + [pytest.param("reference.yaml", 3, marks=[pytest.mark.slow])],
)
def test_prefix_reuse_keeps_greedy_replies_identical(tiny, prompt_file, rounds):
    """Prefix reuse (rounds continue from the stored states; the shared preamble is computed once) gives the
    same replies as recomputing every prompt, batched and one at a time, and computes fewer prompt tokens."""
    from eatlab.llm.prompts import PromptSet
    from eatlab.paths import PROMPTS_DIR

    ps = PromptSet(PROMPTS_DIR / prompt_file, rounds, rounds)
    values = [ps.values("Chinese", sentence=s) for s in REUSE_SENTENCES]
    gen = {"max_new_tokens_cap": 6}
    texts, computed = {}, {}
    for reuse in (False, True):
        for batch_size in (4, 1):
            backend = HFBackend(tiny, batch_size=batch_size, prefix_reuse=reuse)
            client = LLMClient(backend, ResponseCache(mode="off"))
            for direction in (ps.forward, ps.backward):
                starts = [ps.start(direction, v) for v in values]
                res = run_conversations(client, starts, direction, values, gen, "forward")
                texts.setdefault((reuse, batch_size), []).append([[r.text for r in c.replies] for c in res])
            computed[(reuse, batch_size)] = backend.prompt_tokens_computed
            assert backend.prefix_cache.nbytes <= backend.prefix_cache.max_bytes
    assert texts[(True, 4)] == texts[(True, 1)] == texts[(False, 1)] == texts[(False, 4)]
    assert computed[(True, 4)] == computed[(True, 1)] < computed[(False, 1)] <= computed[(False, 4)]


def test_prefix_store_reuses_the_longest_prefix_and_stays_bounded():
    import torch

    from eatlab.llm.prefix_cache import PrefixKVStore

    def kv(n):  # one layer, 1 head, n tokens, dim 2; values = token position
        t = torch.arange(n, dtype=torch.float32).repeat_interleave(2).reshape(1, 1, n, 2)
        return [(t, t.clone())]

    store = PrefixKVStore(max_bytes=1000)
    store.store([1, 2, 3], kv(3))
    n, got = store.lookup([1, 2, 3, 4, 5])
    assert n == 3 and got[0][0].shape == (1, 1, 3, 2)
    assert store.lookup([1, 2, 3])[0] == 2  # the last token is always computed (its logits are needed)
    assert store.lookup([9, 1])[0] == 0
    store.store([1, 2, 3, 4, 5], kv(5))  # the conversation moved on: its earlier prompt is dropped
    assert len(store) == 1 and store.lookup([1, 2, 7])[0] == 2
    store.store([8] * 20, kv(20))  # 320 bytes more: 480 in all, within 1000
    store.store([7] * 40, kv(40))  # 640 more: the oldest entries go until the store fits
    assert store.nbytes <= 1000 and store.lookup([7] * 41)[0] == 40 and store.lookup([1, 2, 3, 4])[0] == 0


# Replies of the tiny model before the decode paths were merged into one (hf_decode): greedy and seeded sampling
PINNED_GREEDY = [
    "\ufeff\n\n\ufeff\n\n\ufeff\n\n herdﻳführt listenedнакнак��/pp/pp",
    "جيرführt勢.BAD stringBuilder㎰ Alv בעournaments Encyclopediaฐฐ",
    "🎬>>>>┰┰┰┰┰┰┰┰┰┰",
]
PINNED_ENTROPIES = [11.6121, 11.6108, 11.6102, 11.6106, 11.6125, 11.6103, 11.6111, 11.6104, 11.6115, 11.6114,
                    11.6117, 11.6125]  # fmt: skip
PINNED_SAMPLED = [
    "dialog�führt平板поз有害 karşısında",
    "GBP Năm stringBuilderominated haired_Bl_localNeo",
    "🎬>>>>EDA undermineführtchemy_Truepseudo",
]
PINNED_CONSTRAINED = [(" 區", 3), ("都", 3), ("столица", 8), ("서울의", 8), (" عاصمة مصر", 7), (" है", 4),
                      ("თბი", 10), ("Երևան", 9)]  # fmt: skip


@pytest.mark.parametrize("reuse", [False, True])
def test_replies_and_entropies_are_pinned(backend, monkeypatch, reuse):
    """Greedy, seeded-sampled and constrained replies (and greedy entropies) of the tiny model, with and without
    prefix reuse: what the two decode paths gave before they became one."""
    b = backend
    monkeypatch.setattr(b, "prefix_reuse", reuse)
    greedy = b.generate(convs()[:3], GenerationSettings(max_new_tokens=12))
    assert [r.text for r in greedy] == PINNED_GREEDY
    assert greedy[0].entropies == pytest.approx(PINNED_ENTROPIES, abs=1e-4)
    sampled = b.generate(
        convs()[:3],
        GenerationSettings(
            max_new_tokens=8,
            do_sample=True,
            temperature=0.7,
            top_p=0.8,
            top_k=20,
            repetition_penalty=1.05,
            seed=7,
        ),  # fmt: skip
    )
    assert [r.text for r in sampled] == PINNED_SAMPLED
    constrained = b.generate(
        convs(), [GenerationSettings(max_new_tokens=10, substring_of=t) for t in SENTENCES]
    )
    assert [(r.text, r.completion_tokens) for r in constrained] == PINNED_CONSTRAINED


def _two_rounds(b, system: str, budgets: list[int]):
    """Two rounds over four conversations sharing a system turn, at `b`'s batch size (one at a time when 1)."""
    prefixes = [[{"role": "system", "content": system}] for _ in SENTENCES[:4]]
    rounds = [[f"Translate: {t}" for t in SENTENCES[:4]], ["Now only the first word."] * 4]
    direction, values = scripted(rounds, budgets)
    b.prefix_cache.clear()
    client = LLMClient(b, ResponseCache(mode="off"), owns_backend=False)
    if b.batch_size == 1:
        return [run_conversations(client, [p], direction, [v], {}, "forward")[0]
                for p, v in zip(prefixes, values, strict=True)]  # fmt: skip
    return run_conversations(client, prefixes, direction, values, {}, "forward")


def test_one_at_a_time_batched_and_reused_replies_are_identical(backend, monkeypatch):
    """Two rounds over conversations sharing a system turn: one at a time, batched, and batched with prefix reuse
    (the shared prefix computed once, then every row from its stored prefix) answer alike; reuse computes less."""
    got, computed = {}, {}
    for batch_size, reuse in ((1, False), (4, False), (4, True)):
        b = backend
        monkeypatch.setattr(b, "batch_size", batch_size)
        monkeypatch.setattr(b, "prefix_reuse", reuse)
        monkeypatch.setattr(b, "prompt_tokens_computed", 0)
        res = _two_rounds(b, "You are a translator. Answer with the translation only.", [5, 3])
        got[(batch_size, reuse)] = [[(r.text, r.completion_tokens) for r in c.replies] for c in res]
        ents = [e for c in res for r in c.replies for e in r.entropies]
        got.setdefault("entropies", []).append(ents)
        computed[(batch_size, reuse)] = b.prompt_tokens_computed
    assert got[(1, False)] == got[(4, False)] == got[(4, True)]
    assert got["entropies"][0] == pytest.approx(got["entropies"][1], abs=1e-4)
    assert got["entropies"][0] == pytest.approx(got["entropies"][2], abs=1e-4)
    assert computed[(4, True)] < computed[(1, False)] <= computed[(4, False)]


def test_finished_rows_leave_the_batch_and_answers_stay(backend):
    """Rows that end early (here: an end token chosen per row among the tokens it would generate) leave the batch:
    fewer rows are decoded, and every row answers as it does alone; its prompt and answer are stored for reuse."""
    from dataclasses import replace

    from eatlab.llm.hf_decode import decode
    from eatlab.llm.prefix_cache import PrefixKVStore

    cs = convs()[:5]
    prompts = [backend.encode(c) for c in cs]
    settings = GenerationSettings(max_new_tokens=8)
    free, _ = decode(backend._lm, prompts, cs, settings, [None] * 5, None)
    ends = [backend._tok(r.text, add_special_tokens=False)["input_ids"] for r in free]
    stops = sorted(
        {ids[min(i + 1, len(ids) - 1)] for i, ids in enumerate(ends)}
    )  # rows end at different steps
    lm = replace(backend._lm, eos=sorted(set(backend._lm.eos) | set(stops)))
    store = PrefixKVStore(1 << 30)
    together, stats = decode(lm, prompts, cs, settings, [None] * 5, store)
    alone = [decode(lm, [p], [c], settings, [None], None)[0][0] for p, c in zip(prompts, cs, strict=True)]
    assert [(r.text, r.completion_tokens, r.finish_reason) for r in together] == [
        (r.text, r.completion_tokens, r.finish_reason) for r in alone
    ]
    for a, b in zip(together, alone, strict=True):
        assert a.entropies == pytest.approx(b.entropies, abs=1e-4)
    lengths = [r.completion_tokens for r in together]
    assert len(set(lengths)) > 1 and any(r.finish_reason == "stop" for r in together)
    assert (
        stats.steps == max(lengths) - 1 and stats.row_steps == sum(n - 1 for n in lengths) < 5 * stats.steps
    )
    stored = {
        seq[: len(p)]: len(seq) for seq in store.sequences() for p in prompts if seq[: len(p)] == tuple(p)
    }
    for p, r in zip(prompts, together, strict=True):  # stored: the prompt and every answer token fed back
        assert stored[tuple(p)] == len(p) + r.completion_tokens - 1


def test_shared_prefixes_are_those_beyond_the_store():
    import torch

    from eatlab.llm.hf_decode import shared_prefixes
    from eatlab.llm.prefix_cache import PrefixKVStore

    store = PrefixKVStore(1 << 20)
    prompts = [[1, 2, 3, 4, 5], [1, 2, 3, 6], [1, 2, 7], [9, 9]]
    assert shared_prefixes(prompts, store) == [[1, 2], [1, 2, 3]]
    kv = torch.zeros(1, 1, 4, 2)
    store.store([1, 2, 3, 4], [(kv, kv)])
    assert shared_prefixes(prompts, store) == []  # the store holds more of each than they share
    assert shared_prefixes([[5, 5, 5], [5, 5, 5]], store) == [[5, 5]]  # equal prompts: all but the last token


@pytest.mark.parametrize("reuse", [False, True])
def test_bf16_batch_invariant_replies_do_not_depend_on_the_batch(tiny, reuse):
    """bf16 with backend.batch_invariant (eatlab.llm.hf_attention): one at a time and batched, with and without
    prefix reuse, give the same replies and bitwise the same entropies (no tolerance)."""
    b = HFBackend(tiny, batch_size=4, dtype="bfloat16")
    b.load()
    assert b._lm.min_rows == 2 and b.model_key.endswith("+dtype:bfloat16+batch_invariant")
    got = []
    for batch_size in (1, 4):
        b.batch_size, b.prefix_reuse = batch_size, reuse
        res = _two_rounds(b, "You are a translator.", [6, 3])
        got.append([[(r.text, r.entropies) for r in c.replies] for c in res])
    assert got[0] == got[1]


def test_batch_invariant_attention_rows_equal_alone(tiny):
    """The attention function itself: a row's bf16 logits, left-padded beside longer rows, are bitwise those of
    the row alone (each forward of >= 2 rows, as hf_decode runs them)."""
    import torch

    from eatlab.llm.hf_load import load_model

    lm = load_model(str(tiny), device="cpu", dtype=torch.bfloat16, batch_invariant=True)
    rows = [lm.tokenizer(t).input_ids for t in SENTENCES[:3]]

    def last_logits(batch):
        w = max(len(x) for x in batch)
        ids = torch.zeros((len(batch), w), dtype=torch.long)
        mask = torch.zeros_like(ids)
        pos = torch.ones_like(ids)
        for r, x in enumerate(batch):
            ids[r, w - len(x) :], mask[r, w - len(x) :] = torch.tensor(x), 1
            pos[r, w - len(x) :] = torch.arange(len(x))
        with torch.inference_mode():
            return lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]

    short = min(rows, key=len)
    alone = last_logits([short, short])[0]
    mixed = last_logits(sorted(rows, key=len, reverse=True))[-1]
    assert torch.equal(alone, mixed)


def test_batch_invariant_enters_the_key_only_in_half_precision():
    from eatlab.llm.identity import make_model_key

    assert make_model_key("m", dtype="float32", batch_invariant=True) == "m"
    assert make_model_key("m", dtype="bfloat16", batch_invariant=True) == "m+dtype:bfloat16+batch_invariant"
    assert make_model_key("m", dtype="bfloat16") == "m+dtype:bfloat16"


def test_causal_lms_load_without_hub_kernels(tiny):
    """transformers 5 kernelizes with code fetched from the Hub whenever `kernels` is installed (offline: a load
    error on CUDA, seen on a lent H200); eatlab's loads switch that off, transformers' default is the control."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    from eatlab.llm.hf_load import load_model

    assert load_model(str(tiny), device="cpu", dtype=torch.float32).model.use_kernels is False
    if importlib.util.find_spec("kernels") is not None:
        assert AutoModelForCausalLM.from_pretrained(str(tiny)).use_kernels is True
