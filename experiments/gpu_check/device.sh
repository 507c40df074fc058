#!/usr/bin/env bash
# `make gpu-check` on a lent GPU machine with no package registry, run in the repo root with .gpu carried
# (experiments/gpu_check/wheelhouse.sh builds it): unpacks the wheels into /tmp/site (wheels are zip files; no pip
# needed), puts them and the repo before the machine's own packages, records the machine and versions, runs the
# checks. Writes env.txt and gpu-check.log to $OUT (the device tool brings $OUT back).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT" /tmp/site
python3 -c 'import glob, sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in glob.glob(".gpu/whl/*.whl")]' /tmp/site || exit 1
export PYTHONPATH=$PWD:/tmp/site:$PWD/.gpu/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
{
  echo "commit ${COMMIT:-unknown}; $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import sys, torch, transformers, peft, bitsandbytes, pytorch_lightning as pl
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda, "| transformers",
      transformers.__version__, "| peft", peft.__version__, "| bitsandbytes", bitsandbytes.__version__,
      "| lightning", pl.__version__)'
} 2>&1 | tee "$OUT/env.txt"
python3 -m eatlab.cli.gpu_check --out /tmp/gpu-check 2>&1 | tee "$OUT/gpu-check.log"
