"""Evidence kept (issue 22 item 7): docs/results.md's generated tables come back from the committed evidence
alone, every other table says it cannot, and evidence is built from real align-eval run dirs."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eatlab.errors import DataError
from eatlab.eval.stats import holm, paired_exact, proportion_ci

ROOT = Path(__file__).resolve().parents[1]
REAL_MODEL = ROOT / "experiments" / "real_model"
TABLES = REAL_MODEL / "tables.py"
EVIDENCE = REAL_MODEL / "evidence"
PAGE = ROOT / "docs" / "results.md"
sys.path.insert(0, str(REAL_MODEL))

import generated  # noqa: E402  (experiments/real_model/generated.py)
import records  # noqa: E402


def _tables(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TABLES), *cmd], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_results_page_matches_its_committed_evidence():
    """What `tables.py regen --check` checks (the command itself runs in the slow test below)."""
    old = PAGE.read_text(encoding="utf-8")
    new, changed = generated.regenerate(old, EVIDENCE, "docs/results.md")
    assert new == old, generated.diff(old, new, "docs/results.md")[-4000:]
    assert changed == []


def test_every_other_table_of_the_page_says_it_is_not_regenerated():
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    inside, previous, missing = False, "", []
    for i, line in enumerate(lines):
        if line.startswith("<!-- generated: "):
            inside = True
        elif line.startswith("<!-- end generated: "):
            inside = False
        is_start = line.lstrip().startswith("|") and not (i and lines[i - 1].lstrip().startswith("|"))
        index = line.startswith("| table | page |")  # the index lists tables, it measures nothing
        if is_start and not inside and not index and "not regenerated" not in previous:
            missing.append(f"line {i + 1}: {line[:60]}")
        if line.strip() and not line.lstrip().startswith("|"):
            previous = line
    assert not missing, missing
    assert "<!-- generated: eacl-control -->" in lines


def test_evidence_files_are_small_and_their_bytes_reproducible(tmp_path):
    files = sorted(EVIDENCE.glob("*.jsonl.gz"))
    assert files
    for path in files:
        assert path.stat().st_size < 400_000, path
        header, runs, pairs = records.read(path)
        assert header["table"] == path.name.removesuffix(".jsonl.gz") and runs and pairs
        assert {p["run"] for p in pairs} <= {r["run"] for r in runs}
        assert all(r["commit"] and len(r["commit"]) == 40 and r["command"] for r in runs)
        again = tmp_path / path.name  # the same records written again: the same bytes (no gzip time stamp)
        records.write(again, header["table"], header["kind"], runs + pairs, header["built_by"])
        assert sorted(gzip.decompress(again.read_bytes()).splitlines()) == sorted(
            gzip.decompress(path.read_bytes()).splitlines()
        )
        records.write(
            tmp_path / "twice.gz", header["table"], header["kind"], runs + pairs, header["built_by"]
        )
        assert again.read_bytes() == (tmp_path / "twice.gz").read_bytes()


def test_the_control_evidence_gives_the_libraries_numbers():
    """The control block's zh dev row, recomputed from the pairs by scipy's binomial interval by hand."""
    _, runs, pairs = records.read(EVIDENCE / "eacl-control.jsonl.gz")
    assert [r["run"] for r in runs] == [
        f"{lang}-{s}" for lang in ("zh", "ja", "ko", "ar", "ru") for s in ("dev", "test")
    ]
    zh = [p for p in pairs if p["run"] == "zh-dev" and p["position"] != "shifted"]
    assert len(zh) == 142 and len({p["unit"] for p in zh}) == 114
    first = zh[:50]
    k = sum(p["control"]["eatlab"]["exact"] for p in first)
    assert k == 43  # 86.0%, the eacl-control block of docs/results.md (zh, dev, first 50)
    lo, hi = proportion_ci(k, 50)
    block = PAGE.read_text(encoding="utf-8")
    assert f"| zh | dev, first 50 | 50 (44) | 86.0 [{100 * lo:.1f}, {100 * hi:.1f}] | 47, 91.5" in block
    assert all(not p["control"]["eatlab"]["exact"] for p in pairs if p["position"] == "shifted")


def test_regen_refuses_a_block_without_evidence_and_evidence_without_a_block(tmp_path):
    ev = tmp_path / "evidence"
    ev.mkdir()
    (ev / "eacl-control.jsonl.gz").write_bytes((EVIDENCE / "eacl-control.jsonl.gz").read_bytes())
    with pytest.raises(DataError, match="no block for the evidence eacl-control"):
        generated.regenerate("no blocks here\n", ev)
    page = "<!-- generated: other -->\n<!-- end generated: other -->\n"
    with pytest.raises(DataError, match="no evidence file for the block"):
        generated.regenerate(page, ev)
    (ev / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="bad.jsonl.gz: not a readable evidence file"):
        records.read(ev / "bad.jsonl.gz")


# ---------------------------------------------------------------------------------------------- from run dirs
@pytest.fixture(scope="module")
def scripted_sweep(tmp_path_factory):
    """eatlab-align-eval on the in-repo zh dev slice (9 pairs) with two scripted models (tests/plugins)."""
    from test_align_eval import PARTLY_RIGHT, ZH_HELDOUT, _run_align_eval

    tmp = tmp_path_factory.mktemp("evidence")
    right = {f"English phrase: {e}\n": p for _, e, p in ZH_HELDOUT}
    (tmp / "partly.json").write_text(json.dumps(PARTLY_RIGHT, ensure_ascii=False), encoding="utf-8")
    (tmp / "right.json").write_text(json.dumps(right, ensure_ascii=False), encoding="utf-8")
    proc = _run_align_eval(
        tmp,
        ["backend.table=partly.json,right.json", "align_eval.directions=[backward]", f"hydra.sweep.dir={tmp / 'sweep'}"],
        multirun=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_evidence_from_run_dirs_then_regen_then_check(scripted_sweep):
    tmp = scripted_sweep
    out = tmp / "ev" / "scripted.jsonl.gz"
    proc = _tables(
        ["evidence", str(tmp / "sweep"), str(tmp / "absent"), "--out", str(out), "--machine", "test"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs, 36 pairs" in proc.stdout and "skipped:" in proc.stderr  # 9 pairs + 9 shifted, each run
    header, runs, pairs = records.read(out)
    assert header["kind"] == "align" and [r["machine"] for r in runs] == ["test", "test"]
    assert runs[0]["factors"] == {"prompts": "eatlab", "rounds": 3, "alignment": "free", "finetune": "none",
                                  "dtype": None}  # fmt: skip
    first = [p for p in pairs if p["run"] == runs[0]["run"]]
    assert [p["pair_id"] for p in first[:2]] == ["zh-eacl-3", "zh-eacl-8"] and first[9][
        "position"
    ] == "shifted"
    assert first[0]["answer"] == "德國" and first[0]["eatlab"] == {"span": [42, 44], "exact": True,
                                                                   "char_f1": 1.0, "reason": None}  # fmt: skip
    page = tmp / "page.md"
    page.write_text(
        "# t\n<!-- generated: scripted -->\nstale\n<!-- end generated: scripted -->\nend\n", "utf-8"
    )
    check = ["--page", str(page), "--evidence", str(out.parent)]
    stale = _tables(["regen", "--check", *check])
    assert stale.returncode == 1 and "-stale" in stale.stdout and "out of date (scripted)" in stale.stdout
    assert page.read_text(encoding="utf-8").count("stale") == 1  # --check changes nothing
    assert _tables(["regen", *check]).returncode == 0
    text = page.read_text(encoding="utf-8")
    assert _tables(["regen", "--check", *check]).returncode == 0
    assert text.startswith("# t\n<!-- generated: scripted -->\n") and text.endswith(
        "<!-- end generated: scripted -->\nend\n"
    )
    # scores: the partly right model 5/9 exact (Wilson), the always right one 9/9, the control 7/9
    table = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| zh | ")}
    lo, hi = proportion_ci(5, 9)
    assert f"| 9 (8) | 55.6 [{100 * lo:.1f}, {100 * hi:.1f}] | 7, 42.9" in table["backend.table=partly.json"]
    assert "| 9 (8) | 100.0 [70.1, 100.0] |" in table["backend.table=right.json"]
    assert (
        "| 77.8 [45.3, 93.7] | 7, 100.0 [64.6, 100.0] | 2, 0.0 [0.0, 65.8] | 9, 0.0 [0.0, 29.9] |"
        in (table["copy-the-head control (no model)"])
    )
    # paired rows: right vs partly (one factor apart) on all pairs and shifted, each run vs the control; Holm over 4
    rows = [line for line in text.splitlines() if re.match(r"\| zh \| (all|shifted) \|", line)]
    assert len(rows) == 4
    assert rows[0].startswith(
        "| zh | all | backend.table=right.json | backend.table=partly.json | 9 | 100.0 | 55.6 |"
    )
    partly, right = ([p for p in pairs if p["run"] == r["run"]] for r in runs)

    def exact(ps, shifted=False, who=None):
        return [
            (p[who] if who else p)["eatlab"]["exact"] for p in ps if (p["position"] == "shifted") == shifted
        ]

    ps = [
        paired_exact(exact(right), exact(partly))["p_value"],
        paired_exact(exact(right, True), exact(partly, True))["p_value"],
        paired_exact(exact(partly), exact(partly, who="control"))["p_value"],
        paired_exact(exact(right), exact(right, who="control"))["p_value"],
    ]
    assert ps[0] == pytest.approx(0.125)  # 4 vs 0 discordant pairs: the exact McNemar p
    for row, p, p_holm in zip(rows, ps, holm(ps)):
        assert row.endswith(f"| {p:.3f} | {p_holm:.3f} | no |"), row  # 9 pairs: none passes Holm
    assert "Holm over the 4 p-values" in text and "Machine: test." in text


@pytest.mark.slow
def test_evidence_of_a_folder_without_finished_runs_is_one_line_and_the_page_checks(tmp_path):
    proc = _tables(["evidence", str(tmp_path), "--out", str(tmp_path / "x.jsonl.gz")])
    assert proc.returncode == 2 and proc.stderr.strip().endswith("no finished align-eval run here")
    proc = _tables(["regen", "--check"])  # the command on docs/results.md and the committed evidence
    assert proc.returncode == 0, proc.stdout[-3000:]
