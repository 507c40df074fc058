"""Analysis: statistics against scipy, quality scores, ablation tables on known inputs, and eatlab-analyze end to end
on real runs of the tiny smoke model (round trip through the same model, cached)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ statistics
def test_correlations_match_scipy_and_intervals_cover_the_estimate():
    from eatlab.analysis.stats import correlate

    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = 0.7 * x + rng.normal(scale=0.5, size=40)
    r = correlate(x, y, n_boot=300, seed=3)
    assert r["n"] == 40 and r["note"] == ""
    assert r["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert r["pearson_p"] == pytest.approx(stats.pearsonr(x, y).pvalue)
    assert r["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert r["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic)
    assert r["kendall_p"] == pytest.approx(stats.kendalltau(x, y).pvalue)
    for m in ("pearson", "spearman", "kendall"):
        assert -1 <= r[f"{m}_ci_low"] <= r[m] <= r[f"{m}_ci_high"] <= 1
    assert correlate(x, y, n_boot=300, seed=3) == r  # seeded


def test_correlations_say_why_they_are_undefined():
    from eatlab.analysis.stats import correlate

    assert "at least 3" in correlate([1, 2], [3, 4])["note"]
    assert "constant" in correlate([1, 2, 3, 4], [0, 0, 0, 0])["note"]
    r = correlate([1, 2, np.nan, 4, 5], [2, 4, 6, np.nan, 10], n_boot=0)
    assert r["n"] == 3 and r["pearson"] == pytest.approx(1.0) and np.isnan(r["pearson_ci_low"])


def test_correlation_table_groups_by_language():
    from eatlab.analysis.stats import correlation_table

    df = pd.DataFrame({"language": ["zh"] * 5 + ["ja"] * 5, "q": np.arange(10.0), "f1": np.arange(10.0) ** 2})
    t = correlation_table(df, ["q", "absent"], ["f1"], level="sentence", group_by="language", n_boot=50)
    assert list(t["group"]) == ["all", "ja", "zh"] and set(t["level"]) == {"sentence"}
    assert t.set_index("group").loc["zh", "spearman"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ quality
def test_references_from_jsonl_and_tsv(tmp_path):
    from eatlab.analysis.quality import load_references, score_references
    from eatlab.errors import DataError

    j = tmp_path / "refs.jsonl"
    j.write_text(
        '{"sentence_id": "zh-test-0", "reference": "Hong Kong film producer Raymond Wong"}\n\n',
        encoding="utf-8",
    )
    t = tmp_path / "refs.tsv"
    t.write_text("zh-test-0\tHong Kong film producer Raymond Wong\nzh-test-1\tWiesbaden\n", encoding="utf-8")
    assert load_references(j) == {"zh-test-0": "Hong Kong film producer Raymond Wong"}
    refs = load_references(t)
    s = pd.DataFrame(
        {
            "sentence_id": ["zh-test-0", "zh-test-1", "zh-test-2"],
            "english": ["Hong Kong film producer Raymond Wong", "a town", "x"],
        }
    )
    scored = score_references(s, refs)
    assert scored["ref_bleu"][0] == pytest.approx(1.0) and scored["ref_chrf"][0] == pytest.approx(1.0)
    assert 0 <= scored["ref_chrf"][1] < 0.5 and np.isnan(scored["ref_bleu"][2])
    bad = tmp_path / "bad.tsv"
    bad.write_text("zh-test-0\tok\nonly-one-column\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_references(bad)
    assert err.value.line == 2
    dup = tmp_path / "dup.jsonl"
    dup.write_text(
        '{"sentence_id": "a", "reference": "x"}\n{"sentence_id": "a", "reference": "y"}\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match="duplicate"):
        load_references(dup)


def test_round_trip_scores_use_the_language_tokenizer():
    from eatlab.analysis.quality import _bleu_chrf, sacrebleu_tokenizer

    assert sacrebleu_tokenizer("zh") == "zh" and sacrebleu_tokenizer("ru") == "13a"
    assert _bleu_chrf("香港著名電影監製", "香港著名電影監製", "zh") == (
        pytest.approx(1.0),
        pytest.approx(1.0),
    )
    # without the zh tokenizer a spaceless sentence is one "word": a near miss scores 0 BLEU
    assert _bleu_chrf("香港著名電影監製黃", "香港著名電影監製", "13a")[0] == 0.0
    assert _bleu_chrf("香港著名電影監製黃", "香港著名電影監製", "zh")[0] > 0.5


# ------------------------------------------------------------------------------------------------ ablations
def _toy(run, lang, tags_pred, **settings):
    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "O"], ["O", "B-ORG", "O"], ["B-PER", "O", "B-LOC"]]
    sent = pd.DataFrame(
        {
            "run": run,
            "sentence_id": [f"{lang}-test-{i}" for i in range(4)],
            "language": lang,
            "gold_tags": gold,
            "pred_tags": tags_pred,
        }
    )
    row = {
        "run": run,
        "language": lang,
        "nsl": lang in ("zh", "ja"),
        "method": "eat",
        "model": "m",
        "prompts": "p",
        "rounds": "r3",
        "extractor": "spacy",
        "finetune": "none",
        "split": "test",
        "drop_redirects": False,
        "generation": "greedy",
        "seed": 0,
        "entity_f1": 0.0,
        "reference_token_micro_f1": 0.0,
    }
    row.update(settings)
    return row, sent


def test_paired_ft_comparison_matches_the_entity_scorer():
    from eatlab.analysis.ablation import ft_comparison
    from eatlab.eval.entity import entity_counts, entity_scores

    perfect = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "O"], ["O", "B-ORG", "O"], ["B-PER", "O", "B-LOC"]]
    weak = [["B-PER", "O", "O"], ["O", "O", "O"], ["O", "B-ORG", "O"], ["B-LOC", "O", "O"]]
    r1, s1 = _toy("a", "zh", weak)
    r2, s2 = _toy("b", "zh", perfect, finetune="eacl_qlora")
    r3, s3 = _toy("c", "ja", weak, finetune="eacl_qlora")  # no finetune=none twin: not compared
    runs = pd.DataFrame([r1, r2, r3])
    table = ft_comparison(runs, pd.concat([s1, s2, s3], ignore_index=True), n_boot=200, seed=0)
    assert len(table) == 1
    row = table.iloc[0]
    f1_weak = entity_scores(entity_counts(list(s1["gold_tags"]), weak))["entity_f1"]
    assert row["f1_baseline"] == pytest.approx(f1_weak) and row["f1"] == pytest.approx(1.0)
    assert row["delta"] == pytest.approx(1.0 - f1_weak) and row["finetune"] == "eacl_qlora"
    assert 0 < row["p_value"] <= 1 and row["delta_ci_low"] <= row["delta"] <= row["delta_ci_high"]
    assert row["baseline"] == "finetune=none" and row["n_sentences"] == 4


def test_seed_rounds_and_script_tables():
    from eatlab.analysis.ablation import main_table, nsl_vs_lsl, rounds_by_language, seed_table

    rows = []
    for lang, nsl in (("zh", True), ("ja", True), ("de", False)):
        for rounds, base in (("r1", 0.2), ("r3", 0.4)):
            for seed, noise in ((1, 0.0), (2, 0.02), (3, 0.04)):
                rows.append(
                    {
                        "run": f"{lang}{rounds}{seed}",
                        "language": lang,
                        "nsl": nsl,
                        "rounds": rounds,
                        "seed": seed,
                        "method": "eat",
                        "model": "m",
                        "finetune": "none",
                        "entity_f1": base + noise + (0.1 if lang == "de" else 0.0),
                        "reference_token_micro_f1": base,
                    }
                )
    runs = pd.DataFrame(rows)
    seeds = seed_table(runs)
    assert len(seeds) == 6 and set(seeds["n_seeds"]) == {3}
    zh_r1 = seeds[(seeds["language"] == "zh") & (seeds["rounds"] == "r1")].iloc[0]
    assert zh_r1["entity_f1_mean"] == pytest.approx(0.22) and zh_r1["entity_f1_std"] == pytest.approx(0.02)
    rl = rounds_by_language(runs).set_index("language")
    assert rl.loc["zh", "r3"] == pytest.approx(0.42) and rl.loc["de", "r1"] == pytest.approx(0.32)
    mt = main_table(runs).set_index("setting")
    assert mt.loc["rounds=r3", "avg_nsl"] == pytest.approx(0.42) and mt.loc["rounds=r3", "n_nsl"] == 2
    ns = nsl_vs_lsl(runs).set_index(["script_group", "rounds"])
    assert ns.loc[("LSL", "r1"), "mean"] == pytest.approx(0.32) and ns.loc[("NSL", "r1"), "n_languages"] == 2


def test_plots_are_pngs_or_none_when_the_sweep_lacks_the_data(tmp_path):
    from eatlab.analysis import plots

    png = b"\x89PNG\r\n\x1a\n"
    runs = pd.DataFrame(
        [
            {
                "language": lang,
                "rounds": r,
                "entity_f1": 0.3 + 0.1 * i + 0.05 * j,
                "rt_chrf": 0.4 + 0.1 * i + 0.03 * j,
            }
            for i, lang in enumerate(["ar", "ja"])
            for j, r in enumerate(["r1", "r3"])
        ]
    )
    ft = pd.DataFrame(
        {
            "language": ["ar", "ja"],
            "delta": [0.05, -0.03],
            "delta_ci_low": [0.02, -0.06],
            "delta_ci_high": [0.08, 0.0],
            "p_value": [0.01, 0.5],
        }
    )
    made = [
        plots.f1_by_language_rounds(runs, tmp_path / "a.png"),
        plots.quality_vs_f1(runs, tmp_path / "b.png", "rt_chrf"),
        plots.ft_delta(ft, tmp_path / "c.png"),
        plots.failure_bars(
            pd.DataFrame({"language": ["ar"], "found": [0.5], "lost_in_translation": [0.5]}),
            tmp_path / "d.png",
        ),
    ]
    assert all(p is not None and p.read_bytes()[:8] == png for p in made)
    assert plots.ft_delta(pd.DataFrame(), tmp_path / "e.png") is None
    assert plots.quality_vs_f1(runs.head(1), tmp_path / "f.png", "rt_chrf") is None
    assert plots.quality_vs_f1(runs, tmp_path / "g.png", "rt_bleu") is None
    assert not (tmp_path / "e.png").exists()


# ------------------------------------------------------------------------------------------------ end to end
def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """Three real runs of the tiny model laid out as a sweep (zh r1, zh r3, ja r3), plus one failed job."""
    from eatlab.cli.run import run_eat
    from eatlab.utils.io import atomic_write_json

    root = tmp_path_factory.mktemp("sweep")
    models = os.environ.get("EATLAB_TEST_MODELS", str(REPO / "outputs" / "test-models"))
    for i, (lang, rounds) in enumerate((("zh", "r1"), ("zh", "r3"), ("ja", "r3"))):
        run_dir = root / f"{i}_language={lang},prompt_rounds={rounds}"
        cfg = _compose(
            [
                f"paths.output_dir={root / 'outputs'}",
                f"paths.run_dir='{run_dir}'",
                f"paths.models_dir={models}",
                "tracking=none",
                "data.limit=3",
                "generation.max_new_tokens=6",
                f"language={lang}",
                f"prompt_rounds={rounds}",
            ]
        )
        run_eat(cfg, run_dir)
    failed = root / "3_language=ko"
    failed.mkdir()
    atomic_write_json(
        failed / "error.json", {"status": "failed", "error_type": "DataError", "message": "boom"}
    )
    return root


@pytest.mark.slow
def test_analyze_end_to_end_with_round_trip_and_cache(sweep_dir, tmp_path, capsys):
    from eatlab.cli.analyze import main

    out = tmp_path / "a"
    refs = tmp_path / "refs.tsv"
    refs.write_text("zh-test-0\tHong Kong film producer\nja-test-0\tJapan\n", encoding="utf-8")
    argv = [
        str(sweep_dir),
        "--out",
        str(out),
        "--roundtrip-max-new-tokens",
        "4",
        "--n-boot",
        "50",
        "--references",
        str(refs),
        "--quiet",
    ]
    assert main(argv) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["status"]) == ["failed", "ok", "ok", "ok"]
    ok = runs[runs["status"] == "ok"]
    for col in ("rt_bleu", "rt_chrf", "ref_bleu", "ref_chrf"):
        assert ok[col].between(0, 1).all(), col
    assert (ok["entropy_mean"] > 0).all() and not ok["entropy_approx"].any()  # exact entropies from logits
    sent = pd.read_csv(out / "sentences.csv")
    assert len(sent) == 9 and sent["rt_chrf"].between(0, 1).all() and sent["roundtrip"].notna().all()
    assert sent["ref_bleu"].notna().sum() == 3  # zh-test-0 in two runs, ja-test-0 in one
    # the round trip went through the same model, and was cached per run
    cache = out / "roundtrip" / "0_language=zh,prompt_rounds=r1.jsonl"
    recs = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    assert len(recs) == 3 and {r["model_key"].split("@")[0] for r in recs} == {"eatlab/tiny-qwen2-smoke"}
    corr = pd.read_csv(out / "correlations.csv")
    assert {"run", "sentence"} == set(corr["level"])
    assert {"rt_bleu", "rt_chrf", "ref_bleu", "entropy_mean"} <= set(corr["measure"])
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "boom" in html and "data:image/png;base64," in html and "Round-trip BLEU/chrF" in html
    info = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    assert info["n_runs"] == 4 and info["n_ok"] == 3
    rl = pd.read_csv(out / "tables" / "rounds_by_language.csv").set_index("language")
    assert set(rl.columns) == {"r1", "r3"} and np.isnan(rl.loc["ja", "r1"])
    # a second analysis answers the round trip from its cache file
    before = cache.stat().st_mtime_ns, cache.read_bytes()
    assert main([*argv, "--n-boot", "20"]) == 0
    assert cache.read_bytes() == before[1]
    capsys.readouterr()


@pytest.mark.slow
def test_analyze_without_round_trip_and_bad_input(sweep_dir, tmp_path, capsys):
    from eatlab.cli.analyze import main

    assert (
        main([str(sweep_dir), "--out", str(tmp_path / "b"), "--no-roundtrip", "--n-boot", "20", "--quiet"])
        == 0
    )
    runs = pd.read_csv(tmp_path / "b" / "runs.csv")
    assert runs["rt_bleu"].isna().all()
    assert "skipped" in (tmp_path / "b" / "report.html").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main([str(tmp_path / "nowhere"), "--no-roundtrip"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--no-roundtrip"]) == 2
    assert "no run dirs" in capsys.readouterr().err


def test_wandb_report_builds_the_same_views():
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    from types import SimpleNamespace

    from eatlab.analysis.wandb_report import build_report

    analysis = SimpleNamespace(
        sweep_dir=Path("/x/2025-01-01_00-00-00"),
        notes=["a note"],
        runs=pd.DataFrame({"wandb_group": ["eat-2025-01-01_00-00-00", None]}),
    )
    report = build_report(analysis, entity="someone", project="eatlab")  # built offline, never saved here
    assert isinstance(report, wr.Report) and report.project == "eatlab" and report.entity == "someone"
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == 2
    assert any(isinstance(p, wr.BarPlot) for p in grids[0].panels)
    assert {p.table_name for p in grids[1].panels if isinstance(p, wr.WeavePanelSummaryTable)} >= {
        "runs",
        "correlations",
        "ft_comparison",
    }
    assert "eat-2025-01-01_00-00-00" in repr(grids[0].runsets[0].filters)


# ------------------------------------------------------------------------------------------------ the report page
def _min_width_px(table: str) -> float:
    """A table's narrowest rendering (its min-content width) at the report's 0.85em of 16px: per column, the
    widest piece that cannot break (pieces end at spaces and <wbr>; `text` cells wrap anywhere), 8 px a
    character (a wide estimate for system-ui), plus 2 x 7 px padding and a border."""
    import html as html_lib
    import re

    head = re.findall(r"<th>(.*?)</th>", table)
    widths = [max(len(p) for p in re.split(r"<wbr>|\s", html_lib.unescape(h))) for h in head]
    for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]:
        for i, (cls, cell) in enumerate(re.findall(r'<td class="(\w+)">(.*?)</td>', row)):
            pieces = re.split(r"<wbr>|\s", html_lib.unescape(cell))
            widths[i] = max(widths[i], 1 if cls == "text" else max(len(p) for p in pieces))
    return sum(w * 8 + 15 for w in widths)


def test_the_report_fits_the_page_and_shows_the_prompt_as_written(tmp_path):
    """On f4a7be8 the runs table had 21 columns of unbreakable names (about 2000 px at its narrowest, on a
    1200 px page) and the prompt note showed a literal \\n\\n."""
    import html
    import re
    import textwrap
    from collections import defaultdict

    from eatlab.analysis.analyze import Analysis, _quality_notes, write_outputs
    from eatlab.analysis.quality import ROUNDTRIP_PROMPT

    n = 4
    runs = pd.DataFrame(
        {
            "run": [
                f"{i}_language=zh,prompt_rounds=r3,finetune=eacl_qlora,model=qwen2.5-7b" for i in range(n)
            ],
            "run_dir": [f"/home/someone/outputs/multiruns/eat/2025-01-01_12-00-00/{i}" for i in range(n)],
            "status": ["ok", "ok", "ok", "failed"],
            "error": [None] * 3
            + ["cache.path=/a/very/long/path/to/responses.sqlite: the cache file is damaged"],
            "overrides": ["language=zh prompt_rounds=r3 finetune=eacl_qlora model=qwen2.5-7b"] * n,
            "language": ["zh", "ja", "ko", "ar"],
            "model": ["Qwen/Qwen2.5-7B-Instruct@a09a35458c702b33eeacc393d103063234e8bc28"] * n,
            "rounds": ["r3"] * n,
            "finetune": ["eacl_qlora"] * n,
            "seed": [0, 1, 2, 3],
            **{
                c: [0.123456] * n
                for c in (
                    "entity_f1",
                    "entity_f1_ci_low",
                    "entity_f1_ci_high",
                    "reference_token_micro_f1",
                    "rt_bleu",
                    "rt_chrf",
                    "ref_bleu",
                    "ref_chrf",
                    "entropy_mean",
                )  # fmt: skip
            },
            "n_sentences": [1000] * n,
            "llm_calls": [123456] * n,
            "llm_cache_hits": [123456] * n,
            "seconds_total": [12345.678] * n,
            "smoke_model": [False] * n,
            "entropy_approx": [False] * n,
        }
    )
    notes = _quality_notes(runs, roundtrip=True, references=None)
    a = Analysis(
        tmp_path, tmp_path, runs, pd.DataFrame(), pd.DataFrame(), defaultdict(pd.DataFrame), notes=notes
    )
    write_outputs(a)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    (runs_table,) = re.findall(r"<h2>Runs</h2>.*?</table>", page, re.S)
    assert _min_width_px(runs_table) <= 1200 - 32  # the page's max-width less its padding
    assert "0.1235\u2013<wbr>0.1235" in runs_table  # the interval in one cell
    assert page.count('<div class="scroll"><table>') == page.count("<table>")  # wider tables scroll in a box
    # the prompt as the model got it: its own lines, not `\n\n` written out
    assert "\\n" not in page and "white-space: pre-wrap" in page
    assert html.escape(textwrap.indent(ROUNDTRIP_PROMPT, "    ")) in page
    assert pd.read_csv(tmp_path / "runs.csv").columns.tolist() == runs.columns.tolist()  # the CSV keeps all
