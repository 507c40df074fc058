"""`eatlab-score` end to end through a real subprocess: JSON and table output, alignment and bad-file errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GOLD = """Paris\tB-LOC
is\tO
nice\tO

John\tB-PER
Smith\tI-PER
works\tO
at\tO
ACME\tB-ORG

nothing\tO
here\tO
"""

# `token gold pred` layout: read as a prediction, the last column gives the predicted tags
PRED3 = """Paris\tB-LOC\tB-LOC
is\tO\tO
nice\tO\tO

John\tB-PER\tB-PER
Smith\tI-PER\tO
works\tO\tO
at\tO\tO
ACME\tB-ORG\tB-ORG

nothing\tO\tO
here\tO\tB-PER
"""

KEYS = {
    "entity_precision",
    "entity_recall",
    "entity_f1",
    "per_type",
    "reference_token_micro_f1",
    "reference_token_macro_f1",
    "reference_token_weighted_f1",
    "n_sentences",
    "entity_f1_ci95",
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eatlab.cli.score", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    gold, pred = tmp_path / "gold.txt", tmp_path / "pred.txt"
    gold.write_text(GOLD, encoding="utf-8")
    pred.write_text(PRED3, encoding="utf-8")
    return gold, pred


def test_json_output(files):
    gold, pred = files
    proc = run_cli(gold, pred, "--language", "en", "--json", "--seed", "3", "--n-boot", "200")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out.keys() >= KEYS
    assert out["n_sentences"] == 3
    # gold: LOC, PER, ORG; pred: LOC, PER (John only), ORG, PER (here) -> tp 2 of 4 predicted, 3 gold
    assert out["entity_precision"] == 0.5
    assert out["entity_recall"] == pytest.approx(2 / 3)
    assert out["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["per_type"]["LOC"]["f1"] == 1.0
    low, high = out["entity_f1_ci95"]
    assert 0.0 <= low <= high <= 1.0
    # the reference scorer skips sentence 3 (no gold entity) and counts tokens: John matched, Smith missed
    assert out["reference_token_micro_f1"] == pytest.approx(2 * 3 / (4 + 3))
    # seeded: the same command gives the same interval
    again = json.loads(run_cli(gold, pred, "-l", "en", "--json", "--seed", "3", "--n-boot", "200").stdout)
    assert again["entity_f1_ci95"] == out["entity_f1_ci95"]


def test_table_output(files):
    gold, pred = files
    proc = run_cli(gold, pred, "--language", "en", "--n-boot", "50")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "entity level" in text and "reference release token level" in text
    assert "micro" in text and "PER" in text and "ORG" in text and "LOC" in text
    assert "66.67" in text  # recall 2/3 as a percentage, only in the human table
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_mismatched_tokens_name_first_differing_sentence(files, tmp_path):
    gold, _ = files
    bad = tmp_path / "bad.txt"
    bad.write_text(GOLD.replace("Smith\tI-PER", "Smyth\tI-PER"), encoding="utf-8")
    proc = run_cli(gold, bad, "--language", "en", "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "sentence 2 " in lines[0] and "Traceback" not in proc.stderr


def test_mismatched_sentence_count(files, tmp_path):
    gold, _ = files
    short = tmp_path / "short.txt"
    short.write_text(GOLD.split("\n\n")[0] + "\n\n" + GOLD.split("\n\n")[1] + "\n", encoding="utf-8")
    proc = run_cli(gold, short, "--language", "en")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "sentence 3 " in proc.stderr and "2 sentences here, 3 in" in proc.stderr


def test_different_length_sentence(files, tmp_path):
    gold, _ = files
    extra = tmp_path / "extra.txt"
    extra.write_text(GOLD.replace("nice\tO\n", "nice\tO\ntoo\tO\n"), encoding="utf-8")
    proc = run_cli(gold, extra, "--language", "en")
    assert proc.returncode == 2 and "sentence 1 " in proc.stderr and "4 tokens here" in proc.stderr


@pytest.mark.parametrize(
    "content, needle",
    [
        ("Paris\tB-LOC\nis\n", ":2: expected 'token<TAB>tag', got a single column"),
        ("Paris\tB-XYZ\n", ":1: unknown tag"),
        ("", "empty"),
        (b"\xff\xfe\x00bad\tO\n", "not UTF-8"),
    ],
)
def test_bad_pred_file(files, tmp_path, content, needle):
    gold, _ = files
    bad = tmp_path / "bad.txt"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content, encoding="utf-8")
    proc = run_cli(gold, bad, "--language", "en")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}") and needle in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_and_unknown_language(files, tmp_path):
    gold, pred = files
    proc = run_cli(gold, tmp_path / "nope.txt", "--language", "en")
    assert (
        proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'nope.txt'}: file does not exist"
    )
    proc = run_cli(gold, pred, "--language", "xx")
    assert proc.returncode == 2 and proc.stderr.startswith("error: language=xx: unknown language")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.shared
def test_console_script_on_a_scoring_case(shared_dir: Path):
    exe = shutil.which("eatlab-score", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("eatlab-score console script not installed in this environment")
    case = shared_dir / "data" / "scoring_cases" / "perturbed_zh_dev300"
    expected = json.loads((case / "expected.json").read_text(encoding="utf-8"))
    proc = subprocess.run(
        [exe, str(case / "gold.txt"), str(case / "pred.txt"), "--language", "zh", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in (
        "entity_f1",
        "reference_token_micro_f1",
        "reference_token_macro_f1",
        "reference_token_weighted_f1",
    ):
        assert out[key] == pytest.approx(expected[key], abs=1e-12, rel=0)
    assert out["n_sentences"] == expected["n_sentences"]
