#!/usr/bin/env bash
# One command for the whole comparison on a 2-GPU host: one-GPU bf16 reference, one-GPU fp32 (bf16 noise scale),
# DDP on 2 GPUs, FSDP2 on 2 GPUs, all through `accelerate launch`, then the comparison table.
#   bash benchmarks/fsdp/run.sh OUT_DIR [train_fsdp.py options, e.g. --steps 50 --size s1]
set -uo pipefail
OUT=${1:?usage: run.sh OUT_DIR [train options]}
shift
mkdir -p "$OUT"
# NVLink multicast stays off on shared hosts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
LAUNCH="$PY -m accelerate.commands.launch"
D=benchmarks/fsdp
launch() {  # label, accelerate options...
  local label=$1; shift
  echo "=== $label"
  $LAUNCH "$@" $D/train_fsdp.py --label "$label" --out "$OUT/$label.json" "${TRAIN_ARGS[@]}" \
    || echo "=== $label FAILED (exit $?)"
}
TRAIN_ARGS=("$@")
launch single-bf16 --config_file $D/single.yaml
launch single-fp32 --config_file $D/single.yaml --mixed_precision no
launch ddp2-bf16 --config_file $D/ddp.yaml
launch fsdp2-bf16 --config_file $D/fsdp2.yaml
$PY $D/compare.py "$OUT"/single-bf16.json "$OUT"/single-fp32.json "$OUT"/ddp2-bf16.json "$OUT"/fsdp2-bf16.json \
  --json "$OUT/fsdp-comparison.json" --markdown "$OUT/fsdp-comparison.md"
