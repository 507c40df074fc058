"""The same views as report.html, in W&B: an `analysis` run in the sweep's group logs the analysis tables and
plots, and a W&B Report (wandb-workspaces) shows the sweep's runs next to them.

Needs the optional extra `eatlab[wandb-report]` (wandb-workspaces) and an online W&B login; it is imported only
when called (`eatlab-analyze SWEEP --wandb-report`) and never runs in CI. `build_report` makes the Report object
without touching the network; `save_report` logs the analysis run and saves the report.
"""

from __future__ import annotations

from eatlab.errors import ConfigError

ANALYSIS_TABLES = (
    "main_entity_f1",
    "rounds_by_language",
    "ft_comparison",
    "nsl_vs_lsl",
    "redirects",
    "seeds",
)


def _workspaces():
    try:
        import wandb_workspaces.reports.v2 as wr
        from wandb_workspaces import expr
    except ImportError:
        raise ConfigError(
            "--wandb-report: needs the optional extra: pip install 'eatlab[wandb-report]'"
        ) from None
    return wr, expr


def sweep_group(analysis) -> str | None:
    """The W&B group of the sweep's runs (every eatlab run records it in record.jsonl)."""
    groups = analysis.runs.get("wandb_group")
    if groups is None:
        return None
    vals = [g for g in groups.dropna().unique() if g]
    return str(vals[0]) if vals else None


def build_report(analysis, *, entity: str, project: str, group: str | None = None):
    """A wandb_workspaces Report: notes, the sweep's runs (F1 per language and rounds, quality vs F1), the
    analysis tables and plots (logged by `log_analysis_run` under the same group)."""
    wr, expr = _workspaces()
    group = group or sweep_group(analysis)
    filters = [expr.Metric("Group") == group] if group else []
    sweep_runs = wr.Runset(
        entity=entity,
        project=project,
        name="sweep runs",
        filters=[*filters, expr.Metric("JobType") != "analysis"],
    )
    analysis_runs = wr.Runset(
        entity=entity,
        project=project,
        name="analysis",
        filters=[*filters, expr.Metric("JobType") == "analysis"],
    )
    notes = "\n".join(f"- {n}" for n in analysis.notes)
    blocks = [
        wr.H1(text=f"eatlab sweep {analysis.sweep_dir.name}"),
        wr.MarkdownBlock(text=f"Group `{group}`. Scores are fractions in [0, 1].\n\n{notes}"),
        wr.PanelGrid(
            runsets=[sweep_runs],
            panels=[
                wr.BarPlot(
                    title="entity F1 by language",
                    metrics=["entity_f1"],
                    groupby=wr.Config("language.code"),
                    groupby_aggfunc="mean",
                    groupby_rangefunc="stddev",
                    orientation="v",
                ),
                wr.BarPlot(
                    title="entity F1 by prompt rounds",
                    metrics=["entity_f1"],
                    groupby=wr.Config("prompt_rounds.forward"),
                    groupby_aggfunc="mean",
                    orientation="v",
                ),
                wr.BarPlot(
                    title="reference token micro F1 by language",
                    metrics=["reference_token_micro_f1"],
                    groupby=wr.Config("language.code"),
                    groupby_aggfunc="mean",
                    orientation="v",
                ),
                wr.ScatterPlot(
                    title="LLM calls vs entity F1",
                    x=wr.SummaryMetric("llm_calls"),
                    y=wr.SummaryMetric("entity_f1"),
                ),
            ],
        ),
        wr.H2(text="Analysis tables and plots"),
        wr.PanelGrid(
            runsets=[analysis_runs],
            panels=[
                *[
                    wr.WeavePanelSummaryTable(table_name=name)
                    for name in ("runs", "correlations", *ANALYSIS_TABLES)
                ],
                wr.MediaBrowser(title="plots", media_keys=["plots"], num_columns=2),
            ],
        ),
    ]
    return wr.Report(
        project=project,
        entity=entity,
        title=f"eatlab: {analysis.sweep_dir.name}"[:128],
        description="Built by eatlab-analyze --wandb-report",
        blocks=blocks,
        width="fluid",
    )


def log_analysis_run(analysis, *, entity: str | None, project: str, group: str | None) -> str:
    """Log the analysis tables and plots as one online run (job_type `analysis`) of the sweep's group."""
    import wandb

    run = wandb.init(
        entity=entity,
        project=project,
        group=group,
        job_type="analysis",
        name=f"analysis-{analysis.sweep_dir.name}",
        mode="online",
        config={"sweep_dir": str(analysis.sweep_dir)},
    )
    try:
        logged = {
            "runs": wandb.Table(dataframe=analysis.runs.astype(str)),
            "correlations": wandb.Table(dataframe=analysis.correlations.astype(str)),
        }
        for name in ANALYSIS_TABLES:
            df = analysis.tables.get(name)
            if df is not None and not df.empty:
                logged[name] = wandb.Table(dataframe=df.astype(str))
        images = [wandb.Image(str(p), caption=c) for c, p in analysis.plots.items() if p is not None]
        if images:
            logged["plots"] = images
        run.log(logged)
        return run.id
    finally:
        run.finish()


def save_report(analysis, *, entity: str | None, project: str) -> str:
    """Log the analysis run, save the report online and return its URL."""
    if not entity:
        raise ConfigError("--wandb-entity: required to save a W&B report")
    group = sweep_group(analysis)
    log_analysis_run(analysis, entity=entity, project=project, group=group)
    report = build_report(analysis, entity=entity, project=project, group=group)
    report.save()
    return report.url
