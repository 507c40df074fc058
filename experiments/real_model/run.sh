#!/usr/bin/env bash
# The real-model measurements of docs/results.md ("A real model in the loop"), one phase per argument:
#   MODEL=/path/to/realmodel experiments/real_model/run.sh align|align-ranked|align-r3|align-ref|finetune|align-ft|e2e|baselines|analyze|align-dev|e2e-dtype|peer|e2e-test
# MODEL is the folder ../shared/tools/real-model/build.sh wrote (MODEL/hf: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M
# dequantised to fp32). Each phase is a Hydra multirun; the response cache (outputs/cache/) is shared, so a
# constrained or ranked run pays only for its final backward rounds. Hours of CPU on 2 cores: run it with nohup.
set -euo pipefail
: "${MODEL:?set MODEL to the folder build.sh wrote}"
SHARED=${SHARED:-../shared/data}
OUT=${OUT:-outputs/real}
MODEL_ID=${MODEL_ID:-qwen2.5-coder-0.5b-instruct-q4km}  # qwen2.5-coder-1.5b-instruct-q4km for build.sh --size 1.5b
M="model=$MODEL_ID model.path=$MODEL/hf tracking=none"
ALIGN_LANGS=${ALIGN_LANGS:-zh,ja,ko,ar,ru}
FT_LANGS=${FT_LANGS:-zh ja ar}
NSL=${NSL:-zh,ja,ko,ar,ru,hi,hy,ka}
E2E="data.root=$SHARED/wikiann data.split=dev data.limit=16 extractor=spacy"
case "${1:?phase}" in
  align)  # one round, free and constrained (eatlab's prompts); every run scores both recoveries
    eatlab-align-eval -m $M heldout.eacl_root=$SHARED/eacl align_eval.limit=50 language=$ALIGN_LANGS \
      prompts=eatlab prompt_rounds=r1 alignment=free,constrained hydra.sweep.dir=$OUT/align-r1 ;;
  align-ranked)  # candidate spans ranked by the model instead of decoded (hf backend)
    eatlab-align-eval -m $M heldout.eacl_root=$SHARED/eacl align_eval.limit=50 language=zh,ja \
      prompts=eatlab prompt_rounds=r1 alignment=ranked hydra.sweep.dir=$OUT/align-r1-ranked ;;
  align-r3)  # eatlab's three rounds
    eatlab-align-eval -m $M heldout.eacl_root=$SHARED/eacl align_eval.limit=50 language=zh \
      prompts=eatlab prompt_rounds=r3 alignment=free,constrained hydra.sweep.dir=$OUT/align-r3 ;;
  align-ref)  # the reference release's script: its three rounds and budgets
    eatlab-align-eval -m $M heldout.eacl_root=$SHARED/eacl align_eval.limit=50 language=$ALIGN_LANGS \
      prompts=reference 'prompts.max_new_tokens=[200,200,80]' alignment=free,constrained \
      hydra.sweep.dir=$OUT/align-ref ;;
  finetune)  # one QLoRA adapter per language on its EACL train pairs (4-bit on CPU, 24 steps of 16 examples);
    # FT_X: more overrides, e.g. the 1.5B's "finetune.quantization=none finetune.compute_dtype=bfloat16" (plain
    # LoRA on a bf16 base: 2 min a step on 2 cores, 3 min in 4-bit)
    for L in $FT_LANGS; do
      eatlab-finetune finetune=eacl_qlora language=$L $M finetune.eacl_root=$SHARED/eacl trainer.max_steps=24 \
        finetune.val_generate=0 ${FT_X:-} hydra.run.dir=$OUT/ft-$MODEL_ID-$L
    done ;;
  align-ft)  # the adapters on their languages' held-out pairs (never trained on)
    eatlab-align-eval -m $M heldout.eacl_root=$SHARED/eacl align_eval.limit=50 language=${FT_LANGS// /,} \
      prompts=eatlab prompt_rounds=r1 finetune=eacl_qlora alignment=free,constrained hydra.sweep.dir=$OUT/align-ft ;;
  e2e)  # EAT end to end, 16 dev sentences per NSL: free and constrained
    eatlab -m $M $E2E language=$NSL method=eat alignment=free,constrained hydra.sweep.dir=$OUT/e2e-eat ;;
  baselines)
    eatlab -m $M $E2E language=$NSL method=direct_llm,translate_test hydra.sweep.dir=$OUT/e2e-baselines ;;
  align-dev)  # the EACL dev slice, r1, free vs constrained x fp32 vs bf16, backward only (the controls come with it);
    # one run dir per setting, each with its own response cache per dtype; then keep the evidence (README.md)
    for DT in ${DTYPES:-float32 bfloat16}; do for L in ${DEV_LANGS:-zh ja ru}; do for A in free constrained; do
      D=$OUT/align-dev/$L-$A-$DT
      [ -f "$D/metrics.json" ] && continue
      eatlab-align-eval $M model.hash_weights=false heldout.eacl_root=$SHARED/eacl align_eval.split=dev \
        align_eval.limit=50 'align_eval.directions=[backward]' language=$L prompts=eatlab prompt_rounds=r1 \
        alignment=$A backend.dtype=$DT cache.path=$OUT/cache-$DT.sqlite hydra.run.dir=$D
    done; done; done ;;
  e2e-dtype)  # EAT r1 free end to end on a seeded sample of 50 WikiANN dev sentences, fp32 vs bf16 (batch-invariant)
    for DT in ${DTYPES:-float32 bfloat16}; do for L in ${DEV_LANGS:-zh ru ja ar}; do
      D=$OUT/e2e-dev/$L-free-$DT
      [ -f "$D/metrics.json" ] && continue
      eatlab $M model.hash_weights=false data.root=$SHARED/wikiann data.split=dev data.sample=50 extractor=spacy \
        language=$L method=eat prompts=eatlab prompt_rounds=r1 alignment=free backend.dtype=$DT \
        cache.path=$OUT/e2e-cache-$DT.sqlite hydra.run.dir=$D
    done; done ;;
  peer)  # 16 zh test sentences, EAT r3 constrained: hf fp32, hf bf16, and a llama.cpp server on 127.0.0.1:8080
    # (start it first: docs/llm.md "llama.cpp as the peer"); time each run on an idle machine
    C="data.root=$SHARED/wikiann data.split=test data.limit=16 extractor=spacy language=zh method=eat prompts=eatlab prompt_rounds=r3 alignment=constrained"
    for S in hf-float32 hf-bfloat16 llamacpp; do
      case $S in
        hf-*) X="backend.dtype=${S#hf-}" ;;
        llamacpp) X="backend=openai backend.base_url=http://127.0.0.1:8080/v1 backend.constraint_param=grammar backend.concurrency=4" ;;
      esac
      eatlab $M model.hash_weights=false $C $X cache.path=$OUT/peer/cache-$S.sqlite hydra.run.dir=$OUT/peer/$S
    done ;;
  e2e-test)  # the paper's question on WikiANN test (issue 22 item 6): a seeded sample of N sentences per language,
    # English NER spacy_wikiann (make train-spacy; SPACY=its model-best, no fallback), fp32 (the faithful dtype);
    # EAT r1 free and constrained, direct_llm, translate_test; one response cache per model, so constrained pays
    # only for its backward calls and translate_test for none. eat-ft: EAT r1 free with the language's adapter
    # (the finetune phase, same MODEL_ID), at ADAPTERS/<lang> (default: the finetune phase's pointer)
    SPACY=${SPACY:-outputs/extractors/spacy_wikiann/model-best}
    ADAPTERS=${ADAPTERS:-outputs/adapters/$MODEL_ID}
    for L in ${TEST_LANGS:-zh ru ja ar}; do for S in ${SETTINGS:-eat-free eat-constrained translate_test direct_llm}; do
      D=$OUT/e2e-test/$MODEL_ID/$L-$S
      [ -f "$D/metrics.json" ] && continue
      case $S in
        eat-ft) X="method=eat alignment=free finetune=eacl_qlora finetune.adapter_path=$(realpath $ADAPTERS/$L)" ;;
        eat-*) X="method=eat alignment=${S#eat-}" ;;
        *) X="method=$S" ;;
      esac
      eatlab $M model.hash_weights=false data.root=$SHARED/wikiann data.split=test data.sample=${N:-100} \
        extractor=spacy_wikiann extractor.model=$SPACY extractor.fallback=null language=$L prompts=eatlab \
        prompt_rounds=r1 $X backend.dtype=float32 cache.path=$OUT/e2e-test/cache-$MODEL_ID.sqlite hydra.run.dir=$D
    done; done ;;
  analyze)
    for d in "$OUT"/align-* "$OUT"/e2e-*; do [ -d "$d" ] && eatlab-analyze "$d" --no-roundtrip || true; done ;;
  *) echo "unknown phase $1" >&2; exit 2 ;;
esac
