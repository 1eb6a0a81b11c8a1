#!/usr/bin/env bash
# The 1.5B preset on this 24 GB / 2-core CPU machine: fp32 export + ONNX Runtime CPU parity (components and
# 16-frame streaming; the end-to-end check needs a second fp32 model and does not fit in 24 GB), then a
# bf16 and fp16 export and CPU-only TensorRT-RTX engine builds. Logs and reports go to benchmarks/results/cpu/.
set -u
OUT=${OUT:-benchmarks/results/cpu}; WD=${WD:-/tmp/wd15cpu}; mkdir -p "$OUT"
VV=".venv/bin/python -m vvtrt"
t() { local t0=$SECONDS; "$@"; echo "[$((SECONDS - t0)) s] $*"; }
t $VV export --model 1.5b -w "$WD" --dtype fp32
t $VV parity -w "$WD" --backend onnxruntime --device cpu --dtype fp32 --no-e2e --json "$OUT/parity_1.5b_ort_cpu_fp32.json"
t $VV export --model 1.5b -w "$WD" --dtype bf16
t $VV build -w "$WD" --flavor tensorrt-rtx --dtype bf16
t $VV export --model 1.5b -w "$WD" --dtype fp16
t $VV build -w "$WD" --flavor tensorrt-rtx --dtype fp16
cp "$WD"/engines/*/manifest.json "$OUT/engines_1.5b_rtx_manifest.json" 2>/dev/null
