#!/usr/bin/env bash
# Every GPU measurement and check, in order, logging to $RUN (kept while the machine
# is warm) and packing results into one tarball. Launched in the background by start.sh; each stage is
# independent (a failure is logged and the next stage runs).
#   STAGES="env gputests tiny b15 b15k5 b15x b7 b7k5 b15par b15ort b15tune b15ortk5 b7ort b7ortk5 prof tf32" bash benchmarks/device/gpu_all.sh
# "b15par+x7" runs two stages at once (x7, x15k5: exports only, CPU-bound).
# DTYPES="bf16" limits b15par's export and parity to bf16; b15par fails when any parity run fails. The
# device's copy of .git can be stale: launch with VVTRT_GIT_COMMIT=<the commit you pushed> so reports
# record the code that ran.
# b15ort and b15tune need the workdir b15par (or x15) exports.
# Every bench stage (b15*, b7*) runs each variant and baseline in its own process and records, per variant:
# time to first audio end to end (the packaged dialogue + voice clips in, cold first request and warm),
# warm prefill-to-first-chunk of that prompt and of a 512-token synthetic prompt (--prompt-tokens, the
# figure of earlier reports), torch's allocator peak, NVML's figure for the variant's own pid, whole-device
# NVML and host RSS.
# The machine goes back 30 s after a call ends: keep calling `bash benchmarks/device/poll.sh 560` back to
# back until ALL DONE, or the background run (and every result not yet packed) is lost.
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN=${RUN:-/root/vvtrt-run}
mkdir -p "$RUN/results"
VV="python3 -m vvtrt"
STAGES=${STAGES:-"env gputests tiny b15 b15ort b7"}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$RUN/progress.log"; }
stage() { local name=$1; shift; log "START $name"; local t0=$SECONDS
  if "$@" > "$RUN/results/$name.log" 2>&1; then log "OK $name ($((SECONDS - t0)) s)"; else log "FAIL $name rc=$? ($((SECONDS - t0)) s)"; fi; }

env_check() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, transformers, onnxruntime as ort, diffusers, soundfile; print(torch.__version__, transformers.__version__, ort.__version__, diffusers.__version__, soundfile.__version__, ort.get_available_providers())"
}
ortfix() {  # the ORT CUDA runner GPU tests alone (the graph-replay test changed after its last GPU run)
  python3 -X faulthandler -m pytest -q -rA -m gpu tests/test_ort_runner.py --junitxml="$RUN/results/ortfix.xml" -p no:cacheprovider
}
gputests() {  # test_gpu.py one process per test (a native crash cannot take the others with it), sharing one
  # exported tiny workdir; then the ORT CUDA runner, long-form, serving-bound and Realtime GPU tests, a process each file
  export VVTRT_SERVING_BOUND_OUT="$RUN/results/serving_bf16_bound.json"
  local ids rc=0 i=0
  export VVTRT_TINY_WORKDIR="$RUN/wd_tiny_tests"
  ids=$(python3 -m pytest -q --collect-only -m gpu tests/test_gpu.py -p no:cacheprovider | grep "::")
  for t in $ids tests/test_ort_runner.py tests/test_longform_gpu.py tests/test_serving_gpu.py tests/test_noise.py tests/test_realtime_runtime.py tests/test_realtime_noise.py; do i=$((i + 1))
    python3 -X faulthandler -m pytest -q -rA -m gpu "$t" --junitxml="$RUN/results/gputests_$i.xml" -p no:cacheprovider || { rc=1; echo "FAILED: $t"; }
  done
  return $rc
}
prof() {  # kernel-level profile of the 1.5B bf16 frame (torch.compile), with and without the frame graph
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors &&
  python3 benchmarks/profile_frame.py "$RUN/wd15" "$RUN/results/profile_1.5b_bf16.json"
}
tf32() { python3 benchmarks/tf32_check.py tiny 1.5b > "$RUN/results/tf32_check.json"; }
tiny() {
  $VV export --model tiny -w "$RUN/wd_tiny" &&
  $VV parity -w "$RUN/wd_tiny" --backend onnxruntime --device cuda --json "$RUN/results/parity_tiny_ort_cuda.json" ;
  $VV parity -w "$RUN/wd_tiny" --backend torch --device cuda --json "$RUN/results/parity_tiny_torch_cuda.json" ;
  $VV synth -w "$RUN/wd_tiny" --backend torch --device cuda --text "Speaker 0: hi" --frames 60 -o "$RUN/results/tiny.wav"
}
b15() {  # torch backend (no ONNX needed): graphs, bench with both baselines, K=10 (b15k5: K=5)
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors &&
  $VV synth -w "$RUN/wd15" --backend torch --device cuda --text "Speaker 0: Hello from the H100." --frames 60 -o "$RUN/results/b15_torch.wav" &&
  $VV bench -w "$RUN/wd15" --backend torch,torch-compile --device cuda --frames 60 --prompt-tokens 512 --repeats 3 \
      --baseline pytorch-eager --baseline transformers --out "$RUN/results/bench_1.5b_k10"
}
b15k5() {
  link_bf16 "$RUN/wd15" "$RUN/wd15k5"
  $VV export --model 1.5b -w "$RUN/wd15k5" --dtype bf16 --components connectors --steps 5 &&
  $VV bench -w "$RUN/wd15k5" --backend torch,torch-compile --device cuda --frames 60 --prompt-tokens 512 --repeats 3 \
      --baseline pytorch-eager --baseline transformers --out "$RUN/results/bench_1.5b_k5"
}
b15x() {  # concurrency: 4 and 8 streams batched per frame step (torch-compile), throughput in the report
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors &&
  for n in 4 8; do
    $VV bench -w "$RUN/wd15" --backend torch-compile --device cuda --frames 60 --prompt-tokens 512 --repeats 3 \
        --streams $n --out "$RUN/results/bench_1.5b_k10_x$n"
  done
}
b15par() {  # export every 1.5B component ($DTYPES, default bf16 + fp32); ORT CUDA parity per dtype in its own
  # process (ORT CUDA sessions live until exit, so one process per dtype bounds their memory), then torch bf16
  local dts=${DTYPES:-bf16 fp32} rc=0
  $VV export --model 1.5b -w "$RUN/wd15" --dtype "${dts// /,}" || return 1
  for dt in $dts; do
    $VV parity -w "$RUN/wd15" --backend onnxruntime --device cuda --dtype $dt --json "$RUN/results/parity_1.5b_ort_cuda_$dt.json" || rc=1
  done
  if [[ " $dts " == *" bf16 "* ]]; then
    $VV parity -w "$RUN/wd15" --backend torch --device cuda --dtype bf16 --json "$RUN/results/parity_1.5b_torch_cuda.json" || rc=1
  fi
  return $rc
}
b15ort() {  # ONNX Runtime CUDA on the exported workdir: synth, bench K=10 and K=5 (per-call and ORT graphs)
  $VV synth -w "$RUN/wd15" --backend onnxruntime --device cuda --text "Speaker 0: Hello from the H100." --frames 60 -o "$RUN/results/b15_ort.wav" ;
  $VV bench -w "$RUN/wd15" --backend onnxruntime,onnxruntime-graph --device cuda --dtype bf16 --frames 60 --prompt-tokens 512 --repeats 3 \
      --out "$RUN/results/bench_1.5b_k10_onnxruntime"
}
link_bf16() {  # reuse the bf16 graphs of one workdir in another: hard links for the graphs (no disk; export
  # unlinks a stale graph before writing), copies for the export records (rewritten in place)
  mkdir -p "$2/onnx"; cp -l "$1"/onnx/*.bf16.onnx* "$2/onnx/" 2>/dev/null; cp "$1"/onnx/*.bf16.json "$2/onnx/" 2>/dev/null; true
}
b15ortk5() {  # ONNX Runtime CUDA at K=5 (exports every bf16 component unless b15par's are there to reuse)
  link_bf16 "$RUN/wd15" "$RUN/wd15k5"
  $VV export --model 1.5b -w "$RUN/wd15k5" --dtype bf16 --steps 5 &&
  $VV bench -w "$RUN/wd15k5" --backend onnxruntime,onnxruntime-graph --device cuda --frames 60 --prompt-tokens 512 --repeats 3 \
      --out "$RUN/results/bench_1.5b_k5_onnxruntime"
}
b15tune() {  # torch.compile max-autotune (autotuned GEMMs for the M=2 shapes): a longer compile
  $VV bench -w "$RUN/wd15" --backend torch-max-autotune --device cuda --frames 60 --prompt-tokens 512 --repeats 3 \
      --out "$RUN/results/bench_1.5b_k10_autotune"
}
b7() {
  $VV export --model 7b -w "$RUN/wd7" --dtype bf16 --components connectors &&
  $VV bench -w "$RUN/wd7" --backend torch,torch-compile --device cuda --frames 60 --prompt-tokens 512 --repeats 3 \
      --baseline pytorch-eager --baseline transformers --out "$RUN/results/bench_7b_k10"
}
b7k5() {
  mkdir -p "$RUN/wd7k5" &&
  $VV export --model 7b -w "$RUN/wd7k5" --dtype bf16 --components connectors --steps 5 &&
  $VV bench -w "$RUN/wd7k5" --backend torch,torch-compile --device cuda --frames 60 --prompt-tokens 512 --repeats 3 \
      --baseline pytorch-eager --baseline transformers --out "$RUN/results/bench_7b_k5"
}
b7ort() {  # ONNX Runtime CUDA for 7B: export every bf16 component, bench K=10
  $VV export --model 7b -w "$RUN/wd7" --dtype bf16 &&
  $VV bench -w "$RUN/wd7" --backend onnxruntime,onnxruntime-graph --device cuda --frames 60 --prompt-tokens 512 --repeats 3 \
      --out "$RUN/results/bench_7b_k10_onnxruntime"
}
b7ortk5() {
  link_bf16 "$RUN/wd7" "$RUN/wd7k5"
  $VV export --model 7b -w "$RUN/wd7k5" --dtype bf16 --steps 5 &&
  $VV bench -w "$RUN/wd7k5" --backend onnxruntime,onnxruntime-graph --device cuda --frames 60 --prompt-tokens 512 --repeats 3 \
      --out "$RUN/results/bench_7b_k5_onnxruntime"
}
x7() {  # export every 7B bf16 graph, K=10 and K=5 (CPU-bound: run it beside a GPU stage with '+')
  $VV export --model 7b -w "$RUN/wd7" --dtype bf16 && link_bf16 "$RUN/wd7" "$RUN/wd7k5" &&
  $VV export --model 7b -w "$RUN/wd7k5" --dtype bf16 --steps 5
}
x15() { $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16; }  # every 1.5B bf16 graph (for b15ort without b15par)
x15k5() { $VV export --model 1.5b -w "$RUN/wd15k5" --dtype bf16 --steps 5; }
long15() {  # long-form: decode cost against context (1k..64k), TTFA of a 32k prompt, then one
  # forced 40,500-frame (90 min) synthesis after a 20,000-token prompt; torch-compile + frame graphs
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors &&
  python3 benchmarks/longform.py "$RUN/wd15" "$RUN/results/longform_1.5b" --device cuda --phases contexts,ttfa &&
  python3 benchmarks/longform.py "$RUN/wd15" "$RUN/results/longform_1.5b_90min" --device cuda --phases long \
      --long-frames 40500 --long-prompt 20000
}
rt() {  # Realtime-0.5B: TTFA, frame step and its components, memory, streams per batch and through
  # the engine (random weights, bf16, K=5, CUDA graphs)
  python3 benchmarks/realtime_bench.py --out "$RUN/results/realtime_0.5b" --batches ${RT_BATCHES:-1,64,256,512} \
      --engine-streams ${RT_ENGINE:-64,256,512}
}
rtc() {  # the same with torch.compile'd components (the gemm decode attention, convolutions as GEMMs); no engine
  # phase (every bucket of a 512-slot engine would compile)
  python3 benchmarks/realtime_bench.py --out "$RUN/results/realtime_0.5b_compile" --compile \
      --batches ${RTC_BATCHES:-1,512} --engine-streams ""
}
rtce() {  # compiled, with the engine phase (lazy capture, one batch bucket per engine: see bench_engine.py)
  python3 benchmarks/realtime_bench.py --out "$RUN/results/realtime_0.5b_compile_engine" --compile \
      --batches ${RTCE_BATCHES:-1} --engine-streams ${RTCE_ENGINE:-512,1024}
}
rtcli() {  # `vvtrt bench` on the Realtime work dir (torch backend)
  $VV export --model realtime-0.5b -w "$RUN/wdrt" --dtype bf16 &&
  $VV bench -w "$RUN/wdrt" --device cuda --backend torch --streams 8 --frames 30 --out "$RUN/results/rt_vvtrt_bench"
}
source "$(dirname "${BASH_SOURCE[0]}")/serving_stages.sh"  # http15, ray1, eproc, srv*, ab, rtcore, ...
# Quantization (README: Quantization): bf16 vs int8 vs fp8 of one model. Exports a work dir per mode (QUANT_COMPONENTS,
# default every component, in bf16; --quant adds the Q/DQ GEMMs of lm_decode and the diffusion head), runs the
# quality gate (vvtrt parity with each of QUANT_BACKENDS, default ONNX Runtime CUDA then the torch path, whose
# result stays in quant_gate.json), then one bench with the work dirs side by side (torch-compile; the uncompiled
# loop only if that failed) and the weights each work dir's loop holds (quant_weights.py, on the GPU). Full
# TensorRT is not installed on these machines: the quantized engines are built by CI (TensorRT-RTX, CPU).
# QUANT_COMPONENTS=connectors QUANT_BACKENDS=torch: the torch path only, whose gate needs no quantized graph (the
# export builds the model and one small graph, where the quantized graphs take minutes). QUANT_MODES (default
# "int8 fp8"): the quantized modes, exported in this order. $1: model preset, $2: results tag.
QUANT_MODES=${QUANT_MODES:-int8 fp8}
quant_export() {  # the exports are CPU-bound: with $3 = 1 the two quantized ones run side by side (memory: 1.5B
  # only; the bf16 one, for the bench's torch-compile baseline, needs only the connectors graph). Writes
  # wdq<tag>.exported when all three succeeded (q15x / q7x can run in the background, started with bg:)
  local model=$1 tag=$2 side=${3:-0} rc=0 q p comps=() pids=()
  [[ -n ${QUANT_COMPONENTS:-} ]] && comps=(--components "$QUANT_COMPONENTS")
  $VV export --model $model -w "$RUN/wdq${tag}_none" --dtype bf16 --components connectors || rc=1
  for q in $QUANT_MODES; do
    if [[ $side == 1 ]]; then
      $VV export --model $model -w "$RUN/wdq${tag}_$q" --dtype bf16 --quant $q "${comps[@]}" \
          > "$RUN/results/export_${tag}_$q.log" 2>&1 &
      pids+=($!)
    else
      $VV export --model $model -w "$RUN/wdq${tag}_$q" --dtype bf16 --quant $q "${comps[@]}" || rc=1
    fi
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done  # these exports only (not the run's bg: stages)
  for q in $QUANT_MODES; do [[ $side == 1 ]] && tail -n 3 "$RUN/results/export_${tag}_$q.log"; done
  (( rc == 0 )) && touch "$RUN/wdq${tag}.exported"
  return $rc
}
wait_bg() {  # wait while the bg: stage $1 of this run is still running
  local f="$RUN/bg_$1.pid"
  [[ -e $f ]] && while kill -0 "$(cat "$f")" 2>/dev/null; do sleep 1; done
  return 0
}
quant_stage() {  # the quality gate and the side-by-side bench of the exports above (made here unless q<tag>x made them)
  local model=$1 tag=$2 side=${3:-0} rc=0 q wd b comps=() cmp=()
  [[ -n ${QUANT_COMPONENTS:-} ]] && comps=(--components "$QUANT_COMPONENTS")
  [[ -e "$RUN/wdq${tag}.exported" ]] || quant_export "$@" || rc=1
  for q in $QUANT_MODES; do
    wd="$RUN/wdq${tag}_$q"
    $VV export --model $model -w "$wd" --dtype bf16 --quant $q "${comps[@]}" || { rc=1; continue; }  # up to date: a check
    cmp+=(--compare-workdir "$wd")  # benched only when its export is whole
    for b in ${QUANT_BACKENDS:-onnxruntime torch}; do
      $VV parity -w "$wd" --backend $b --device cuda --dtype bf16 --json "$RUN/results/parity_${tag}_${q}_${b}_cuda.json" || rc=1
    done
    cp "$wd/quant_gate.json" "$RUN/results/quant_gate_${tag}_${q}.json" 2>/dev/null
  done
  # the unquantized work dir's teacher-forced SNR: the reference of the quantized ones' (quant_targets.py)
  $VV parity -w "$RUN/wdq${tag}_none" --backend torch --device cuda --dtype bf16 \
      --json "$RUN/results/parity_${tag}_none_torch_cuda.json" || rc=1
  for b in ${QUANT_BENCH_WAIT:-}; do wait_bg "$b"; done  # bg: stages on the GPU that must end before the bench
  for b in torch-compile torch; do  # the uncompiled loop only where the compiled one failed
    $VV bench -w "$RUN/wdq${tag}_none" "${cmp[@]}" \
        --backend $b --device cuda --dtype bf16 --frames 60 --prompt-tokens 512 --repeats 3 \
        --out "$RUN/results/bench_${tag}_quant_$b" && break
    rc=1
  done
  local wds=("$RUN/wdq${tag}_none") ; for q in $QUANT_MODES; do wds+=("$RUN/wdq${tag}_$q"); done
  python3 benchmarks/quant_weights.py "$RUN/results/quant_weights_${tag}.json" --device cuda \
      "${wds[@]/#/--workdir=}" || rc=1  # the weights the loop holds, counted by tensor
  python3 benchmarks/quant_targets.py "$RUN/results" --tag $tag --model $model || rc=1  # each target met or missed
  python3 -m pytest -q -rA -m gpu tests/test_quant.py tests/test_bench.py -p no:cacheprovider || rc=1
  return $rc
}
q15x() { quant_export 1.5b 1.5b 1; }
# Q7_SIDE=1: the 7B int8 and fp8 exports side by side (two 7B exports in host memory at once); Q7_MODES: the 7B's
# quantized modes (default QUANT_MODES)
Q7_MODES=${Q7_MODES:-$QUANT_MODES}
q7x() { QUANT_MODES=$Q7_MODES quant_export 7b 7b ${Q7_SIDE:-0}; }
q15() { wait_bg q15x; quant_stage 1.5b 1.5b 1; }
q7() { wait_bg q7x; QUANT_MODES=$Q7_MODES quant_stage 7b 7b ${Q7_SIDE:-0}; }
STAGE_NAMES=" gpurest wd7x q15x q7x ab srvrate srvpipe gpucore http300 rows srvrows eproc eprocgpu rtnoise srvmix q15 q7 gpunoise noise15 ray1 convb cstart srvcore srvlong gpusrv rtcore rtx gpu8 rtserve rtc rtce rtcli ortfix dcost ctx15 rtpar prof15 prof7 srv15 srv7 long15 rt http15 env gputests tiny b15 b15k5 b15x b7 b7k5 b15par b15ort b15tune b15ortk5 b7ort b7ortk5 prof tf32 x7 x15 x15k5 "
run_stage() {
  local fn=$1; [[ $fn == env ]] && fn=env_check
  if [[ $STAGE_NAMES == *" $1 "* ]]; then stage "$1" "$fn"; else log "unknown stage $1"; fi
}
# "a+b" runs stages a and b at the same time (for exports, which use the CPU, beside GPU work; never
# put two timed benches in one group, nor two stages that write one workdir, like x7+b7ort); "bg:a" starts
# stage a and goes on at once (an export a later stage waits for, e.g. bg:q7x ... q7; it loads the CPU, so no
# timed bench should run while it does)
rm -f "$RUN"/bg_*.pid "$RUN"/wdq*.exported  # markers of an earlier run in this folder
for s in $STAGES; do
  if [[ $s == bg:* ]]; then
    run_stage "${s#bg:}" &
    echo $! > "$RUN/bg_${s#bg:}.pid"  # before the next stage starts: it may wait for this one
  elif [[ $s == *+* ]]; then
    pids=(); for part in ${s//+/ }; do run_stage "$part" & pids+=($!); done; wait "${pids[@]}"  # not the bg: ones
  else
    run_stage "$s"
  fi
done
wait
log "ALL DONE"
