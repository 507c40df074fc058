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
        bench_main(["--n", "4", "--max-new-tokens", "3,3,2", "--model-dir", str(tiny), "--threads", "1"]) == 0
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
