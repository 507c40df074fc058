"""Translation-quality analysis of sweeps (`eatlab-analyze SWEEP_DIR`).

load: runs and sentences of a sweep; quality: round-trip and reference BLEU/chrF; stats: correlations with
bootstrap intervals; ablation: the study tables; plots: PNGs; report: report.html; analyze: all of it;
wandb_report: the same views in W&B (optional extra); cli: the command.
"""
