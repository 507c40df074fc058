"""Scoring: reference cases to 1e-12, seqeval agreement on full test files, bootstrap determinism and power."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from seqeval.metrics.sequence_labeling import precision_recall_fscore_support as seqeval_prfs

from eatlab.data.bio import ENTITY_TYPES, VALID_TAGS, tags_to_spans
from eatlab.data.conll import read_conll
from eatlab.data.languages import ALL_CODES
from eatlab.eval import score
from eatlab.eval.bootstrap import bootstrap_f1_ci, f1_from_sums, paired_bootstrap_test
from eatlab.eval.entity import EntityCounts, entity_counts, entity_scores
from eatlab.eval.reference import reference_scores, reference_unit_labels

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # seqeval's UndefinedMetricWarning

SCORE_KEYS = (
    "entity_precision",
    "entity_recall",
    "entity_f1",
    "reference_token_micro_f1",
    "reference_token_macro_f1",
    "reference_token_weighted_f1",
)
TAGS = sorted(VALID_TAGS)


def perturb(gold: list[list[str]], seed: int) -> list[list[str]]:
    """Seeded predictions from gold: entities dropped, retyped, widened, shrunk, shifted, started with a
    dangling I-, spurious entities added, plus random token-level tag noise (any BIO pattern, valid or not)."""
    rng = random.Random(seed)
    out = []
    for tags in gold:
        new = list(tags)
        n = len(new)
        for sp in tags_to_spans(tags, "conlleval"):
            r = rng.random()
            if r < 0.12:  # drop
                new[sp.start : sp.end] = ["O"] * (sp.end - sp.start)
            elif r < 0.22:  # retype
                t = rng.choice([t for t in ENTITY_TYPES if t != sp.type])
                new[sp.start : sp.end] = [f"B-{t}"] + [f"I-{t}"] * (sp.end - sp.start - 1)
            elif r < 0.30 and sp.end < n and new[sp.end] == "O":  # widen right
                new[sp.end] = f"I-{sp.type}"
            elif r < 0.38 and sp.end - sp.start > 1:  # shrink
                new[sp.end - 1] = "O"
            elif r < 0.44:  # dangling I- start
                new[sp.start] = f"I-{sp.type}"
            elif r < 0.48 and sp.start > 0 and new[sp.start - 1] == "O":  # shift start left
                new[sp.start - 1], new[sp.start] = f"B-{sp.type}", f"I-{sp.type}"
        if n and rng.random() < 0.10:  # spurious entity
            i = rng.randrange(n)
            if new[i] == "O":
                new[i] = f"B-{rng.choice(ENTITY_TYPES)}"
        for i in range(n):  # token-level noise
            if rng.random() < 0.02:
                new[i] = rng.choice(TAGS)
        out.append(new)
    return out


def assert_matches_seqeval(gold: list[list[str]], pred: list[list[str]]) -> dict:
    ours = entity_scores(entity_counts(gold, pred))
    p, r, f, _ = seqeval_prfs(gold, pred, average="micro")
    assert ours["entity_precision"] == pytest.approx(p, abs=1e-9)
    assert ours["entity_recall"] == pytest.approx(r, abs=1e-9)
    assert ours["entity_f1"] == pytest.approx(f, abs=1e-9)
    ps, rs, fs, ss = seqeval_prfs(gold, pred, average=None)
    seen = sorted({sp.type for tags in gold + pred for sp in tags_to_spans(tags)})
    assert len(seen) == len(ps)
    for t, pi, ri, fi, si in zip(seen, ps, rs, fs, ss):
        m = ours["per_type"][t]
        assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((pi, ri, fi), abs=1e-9), t
        assert m["support"] == si
    return ours


# --- the shared scoring cases (checked against the reference release's code) ---------------------------


def _case_dirs() -> list[str]:
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "scoring_cases"
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return names or ["<absent>"]


@pytest.mark.shared
@pytest.mark.parametrize("case", _case_dirs())
def test_scoring_case_matches_expected(shared_dir: Path, case: str):
    folder = shared_dir / "data" / "scoring_cases" / case
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    lang = expected["language"]
    gold = read_conll(folder / "gold.txt", language=lang)
    pred = read_conll(folder / "pred.txt", language=lang)
    assert [s.tokens for s in gold] == [s.tokens for s in pred]
    result = score([s.tags for s in gold], [s.tags for s in pred], [s.tokens for s in gold], lang, n_boot=200)
    assert result["n_sentences"] == expected["n_sentences"]
    for key in SCORE_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-12, rel=0), key
    assert_matches_seqeval([s.tags for s in gold], [s.tags for s in pred])


@pytest.mark.shared
def test_all_scoring_cases_present(shared_dir: Path):
    cases = [p for p in (shared_dir / "data" / "scoring_cases").iterdir() if p.is_dir()]
    assert len(cases) == 15
    langs = {json.loads((p / "expected.json").read_text())["language"] for p in cases}
    assert len(langs) == 10


# --- seqeval agreement on full test files ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("lang", ALL_CODES)
def test_entity_scores_equal_seqeval_on_full_test_file(shared_dir: Path, lang: str):
    sentences = read_conll(shared_dir / "data" / "wikiann" / lang / "test.txt", language=lang)
    gold = [s.tags for s in sentences]
    for seed in (sum(map(ord, lang)), 1000 + sum(map(ord, lang))):
        ours = assert_matches_seqeval(gold, perturb(gold, seed=seed))
        assert 0.3 < ours["entity_f1"] < 0.95  # the perturbation really changes predictions


def test_entity_scores_equal_seqeval_on_random_tag_soup():
    rng = random.Random(7)
    gold = [[rng.choice(TAGS) for _ in range(rng.randrange(0, 12))] for _ in range(300)]
    pred = [[rng.choice(TAGS) for _ in tags] for tags in gold]
    assert_matches_seqeval(gold, pred)
    assert_matches_seqeval(gold, perturb(gold, seed=3))


def test_entity_conlleval_chunking_counts():
    gold = [["B-PER", "I-LOC", "O", "I-ORG", "I-ORG"]]
    pred = [["B-PER", "O", "O", "B-ORG", "I-ORG"]]
    counts = entity_counts(gold, pred)
    assert counts.types[:3] == ENTITY_TYPES
    res = entity_scores(counts)
    assert res["per_type"]["PER"]["support"] == 1 and res["per_type"]["LOC"]["support"] == 1
    # gold: PER, LOC (I-LOC after B-PER starts a new entity), ORG (dangling I-ORG I-ORG); both predictions match
    assert res["n_gold_entities"] == 3 and res["n_pred_entities"] == 2
    assert res["entity_precision"] == 1.0
    assert res["entity_recall"] == pytest.approx(2 / 3)


def test_empty_inputs_give_zero_scores():
    res = score([], [], [], "en", n_boot=10)
    assert res["entity_f1"] == 0.0 and res["reference_token_micro_f1"] == 0.0
    assert res["entity_f1_ci95"] == [0.0, 0.0] and res["n_sentences"] == 0
    res = score([["O", "O"]], [["O", "B-PER"]], [["a", "b"]], "en", n_boot=10)
    assert res["entity_precision"] == 0.0 and res["reference_token_weighted_f1"] == 0.0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="sentence 1"):
        entity_counts([["O", "O"]], [["O"]])
    with pytest.raises(ValueError):
        score([["O"]], [], [["a"]], "en")


# --- the reference scorer's quirks, one by one --------------------------------------------------------------


def test_reference_first_free_occurrence_and_skip():
    toks = ["Paris", "and", "Paris", "again"]
    # the predicted second Paris is placed on the first free occurrence, like the gold
    assert reference_unit_labels(toks, ["O", "O", "B-LOC", "O"], False) == ["LOC", "O", "O", "O"]
    both = reference_unit_labels(toks, ["B-LOC", "O", "B-LOC", "O"], False)
    assert both == ["LOC", "O", "LOC", "O"]
    # a sentence without gold entities is skipped: its false positive does not count
    res = reference_scores(
        [["B-LOC", "O"], ["O", "O"]], [["B-LOC", "O"], ["B-PER", "O"]], [["a", "b"]] * 2, False
    )
    assert res["reference_token_micro_f1"] == 1.0


def test_reference_chunking_digits_and_char_units():
    # B-PER I-LOC is one PER entity for the reference
    assert reference_unit_labels(["a", "b"], ["B-PER", "I-LOC"], False) == ["PER", "PER"]
    # "( 1 )" is removed from the string before matching in space-separated languages
    toks = ["서울", "(", "1", ")", "도시"]
    assert reference_unit_labels(toks, ["B-LOC", "I-LOC", "I-LOC", "I-LOC", "O"], False) == [
        "LOC",
        "O",
        "O",
        "O",
        "O",
    ]
    # zh: a string with a space (token #) is never placed; "'''" becomes "'" in the units
    assert reference_unit_labels(["张", "#", "三"], ["B-PER", "I-PER", "I-PER"], True) == ["O"] * 3
    assert len(reference_unit_labels(["'", "'", "'", "北"], ["O", "O", "O", "B-LOC"], True)) == 2
    # zh: non-overlapping matches, left to right (as re.finditer): "AA" in "AAA" only matches at 0
    assert reference_unit_labels(list("AAA"), ["B-LOC", "I-LOC", "O"], True) == ["LOC", "LOC", "O"]
    labels = ["B-LOC", "I-LOC", "O"]
    gold_units = reference_unit_labels(list("AAA"), labels, True)
    # a second "AA" cannot go to offset 1 (overlapping match), so it is not placed
    assert gold_units == ["LOC", "LOC", "O"]


def test_reference_macro_counts_absent_labels_as_zero():
    res = reference_scores([["B-LOC"]], [["B-LOC"]], [["Paris"]], False)
    assert res["reference_token_micro_f1"] == 1.0
    assert res["reference_token_macro_f1"] == pytest.approx(1 / 3)
    assert res["reference_token_weighted_f1"] == 1.0


# --- bootstrap -----------------------------------------------------------------------------------------------


def _counts_from_totals(tp, pred, gold) -> EntityCounts:
    col = lambda a: np.asarray(a, dtype=np.int64).reshape(-1, 1)  # noqa: E731
    return EntityCounts(("PER",), col(tp), col(pred), col(gold))


@pytest.fixture(scope="module")
def synthetic_systems():
    rng = random.Random(11)
    gold = []
    for _ in range(1500):
        n = rng.randrange(3, 12)
        tags = ["O"] * n
        i = rng.randrange(n)
        tags[i] = f"B-{rng.choice(ENTITY_TYPES)}"
        gold.append(tags)
    return gold, perturb(gold, seed=1), perturb(gold, seed=2)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate(synthetic_systems):
    gold, pred, _ = synthetic_systems
    counts = entity_counts(gold, pred)
    f1 = entity_scores(counts)["entity_f1"]
    a = bootstrap_f1_ci(counts, n_boot=500, seed=5)
    assert a == bootstrap_f1_ci(counts, n_boot=500, seed=5)
    assert a != bootstrap_f1_ci(counts, n_boot=500, seed=6)
    assert a[0] < f1 < a[1] and a[1] - a[0] < 0.1
    assert score(gold, pred, [["x"] * len(t) for t in gold], "en", seed=3)["entity_f1_ci95"] == list(
        bootstrap_f1_ci(counts, n_boot=1000, seed=3)
    )


def test_f1_interval_is_not_zero_width_without_a_true_positive():
    """0 true positives: every resample scores 0, so the upper end is exact (scipy's Clopper-Pearson bound for 0
    of the 3 sentences that hold gold, as F1 with precision 1), the same for sentences and for clusters."""
    from scipy.stats import binomtest

    gold = [["B-PER", "O"], ["O", "O"], ["B-LOC", "I-LOC"], ["B-ORG", "B-PER"], ["O", "O"]]
    pred = [["O", "B-PER"], ["B-ORG", "O"], ["O", "O"], ["O", "O"], ["O", "O"]]
    r = binomtest(0, 3).proportion_ci(confidence_level=0.95, method="exact").high
    assert r == pytest.approx(1 - 0.025 ** (1 / 3))
    assert bootstrap_f1_ci(entity_counts(gold, pred), n_boot=200, seed=0) == (
        0.0,
        pytest.approx(2 * r / (1 + r)),
    )
    r2 = (
        binomtest(0, 2).proportion_ci(confidence_level=0.95, method="exact").high
    )  # sentences 0+2 one cluster
    got = bootstrap_f1_ci(entity_counts(gold, pred), n_boot=200, seed=0, units=[0, 1, 0, 3, 4])
    assert got == (0.0, pytest.approx(2 * r2 / (1 + r2)))


def test_paired_bootstrap_p_values(synthetic_systems):
    gold, pred_a, pred_b = synthetic_systems
    ca, cb, cg = entity_counts(gold, pred_a), entity_counts(gold, pred_b), entity_counts(gold, gold)
    same = paired_bootstrap_test(ca, ca, n_boot=500, seed=0)
    assert same.delta == 0.0 and same.p_value == 1.0
    # two perturbations of the same strength: no significant difference expected
    close = paired_bootstrap_test(ca, cb, n_boot=500, seed=0)
    assert close.p_value > 0.05
    better = paired_bootstrap_test(cg, ca, n_boot=500, seed=0)
    assert better.delta > 0.2 and better.p_value < 0.05
    assert paired_bootstrap_test(cg, ca, n_boot=500, seed=0, alternative="greater").p_value < 0.05
    assert paired_bootstrap_test(ca, cg, n_boot=500, seed=0, alternative="greater").p_value > 0.95
    assert better == paired_bootstrap_test(cg, ca, n_boot=500, seed=0)
    assert better.delta_ci95[0] <= better.delta <= better.delta_ci95[1]
    with pytest.raises(ValueError):
        paired_bootstrap_test(ca, entity_counts(gold[:10], pred_a[:10]))


def test_bootstrap_ci_on_10k_sentences():
    """The seeded interval on 10k sentences x 1000 resamples (its wall time: `eatlab-bench --timings`)."""
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 10_000)
    pred = rng.integers(0, 4, 10_000)
    tp = np.minimum(gold, pred)
    counts = _counts_from_totals(tp, pred, gold)
    assert (tp.sum(), pred.sum(), gold.sum()) == (8674, 14918, 15033)
    low, high = bootstrap_f1_ci(counts, n_boot=1000, seed=0)
    assert (low, high) == (
        pytest.approx(0.5714669013088572, abs=1e-6),
        pytest.approx(0.5869146889924037, abs=1e-6),
    )
    assert low < 2 * 8674 / (14918 + 15033) < high


def test_f1_from_sums_matches_prf():
    assert f1_from_sums(np.array([0, 3]), np.array([0, 4]), np.array([0, 5])).tolist() == [0.0, 6 / 9]
