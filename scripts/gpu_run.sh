#!/usr/bin/env bash
# The whole GPU check of issue 17 in one device call (about 10 minutes on one H200, 16 cores):
#
#   here, once:  bash scripts/gpu_bundle.sh && python scripts/gpu_check.py expect .gpu/expected.npz
#   there:       bash scripts/gpu_run.sh          (device run, carry [".gpu"], timeout_s 600)
#
# 1. starts the full-size random checkpoint (scripts/make_checkpoint.py, numpy only) in the
#    background, 2. builds llama.cpp with CUDA and installs the wheels (scripts/gpu_setup.sh),
# 3. parity on the tiny checkpoint: decoder offloaded, encoders on CuPy, against the reference and
#    CPU logits computed here (gpu_check.py parity), 4. converts the full-size checkpoint (Q4_K_M,
#    f16 encoders) and 5. measures it, GPU against CPU, within what is left of BUDGET_S.
# Every result is a JSON line in $OUT/*.jsonl, written as it comes, so a cut-off run still reports.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-560}
started=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - started) )); }
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 scripts/make_checkpoint.py /tmp/full-ckpt --size full >"$OUT/make_checkpoint.log" 2>&1 &
maker=$!
source scripts/gpu_setup.sh 2>&1 | tail -n 30 | tee "$OUT/setup.log"
source scripts/gpu_setup.sh >/dev/null 2>&1 || { echo "setup failed"; exit 1; }  # exports (cheap the second time)
echo "setup done after $(( $(date +%s) - started )) s"
timeout "$(left)" python3 scripts/gpu_check.py parity .gpu/expected.npz /tmp/gpu-work --encoder-device cuda \
    2>&1 | grep -v '^\[transformers\]' | tee "$OUT/parity.jsonl"
wait "$maker" || { echo "make_checkpoint failed"; tail "$OUT/make_checkpoint.log"; exit 1; }
echo "checkpoint ready after $(( $(date +%s) - started )) s"
timeout "$(left)" python3 -m phi4mm convert /tmp/full-ckpt /tmp/full-q4 --quant q4_k_m \
    --encoder-type f16 >"$OUT/convert.log" 2>&1 || { echo "convert failed"; tail "$OUT/convert.log"; exit 1; }
echo "converted after $(( $(date +%s) - started )) s"
timeout "$(left)" python3 scripts/gpu_check.py bench /tmp/full-q4 --encoder-device cuda --budget-s $(( $(left) - 20 )) \
    2>&1 | tee "$OUT/bench.jsonl"
echo "done after $(( $(date +%s) - started )) s"
