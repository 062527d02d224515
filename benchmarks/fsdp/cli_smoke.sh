#!/usr/bin/env bash
# `hybrid-hf init/train/eval` with transformers.Trainer under an accelerate config (default: FSDP2 on 2 GPUs).
# FSDP needs `--fsdp_state_dict_type FULL_STATE_DICT` among the launch options for a loadable final folder.
#   bash benchmarks/fsdp/cli_smoke.sh OUT_DIR [accelerate config] [extra accelerate launch options]
set -uo pipefail
OUT=${1:?usage: cli_smoke.sh OUT_DIR [CONFIG] [launch options]}
CONFIG=${2:-benchmarks/fsdp/fsdp2.yaml}
shift; shift || true
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
LAUNCH="$PY -m accelerate.commands.launch"
W=$(mktemp -d)
$PY -c "from hybrid_hf.data import build_corpus; build_corpus(400_000, output='$W/corpus.txt')" &&
$PY -m hybrid_hf.cli.main init "$W/model" --preset swa128 --size "${SMOKE_SIZE:-s1}" --vocab-size 2048 \
  --tokenizer-corpus "$W/corpus.txt" &&
$LAUNCH --config_file "$CONFIG" "$@" -m hybrid_hf.cli.main train "$W/model" --data "$W/corpus.txt" \
  --output-dir "$W/run" --eval-fraction 0.05 --block-size 512 --batch-size 8 --max-steps 40 --save-steps 20 \
  --logging-steps 10 --bf16 --no-progress &&
$PY -m hybrid_hf.cli.main eval "$W/run/final" --data "$W/corpus.txt" --max-documents 20 --block-size 512 \
  --output "$OUT/cli-eval.json" &&
$PY - "$W/run/train_results.json" "$OUT/cli-train.json" <<'EOPY'
import json, sys
r = json.load(open(sys.argv[1]))
keep = {"train": r["train"], "eval": r.get("eval"), "losses": [(h["step"], h["loss"]) for h in r["log_history"] if "loss" in h],
        "eval_losses": [(h["step"], h["eval_loss"]) for h in r["log_history"] if "eval_loss" in h]}
json.dump(keep, open(sys.argv[2], "w"), indent=1)
print(json.dumps(keep, indent=1))
EOPY
status=$?
echo "cli smoke exit status: $status"
exit $status
