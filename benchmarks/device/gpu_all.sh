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
http15() {  # vvtrt serve (1.5B bf16, torch) + vvtrt loadtest on the same machine, rising concurrency
  local port=8123 pid n
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors || return 1
  $VV serve -w "$RUN/wd15" --device cuda --max-streams ${HTTP_SLOTS:-128} --max-context 1024 --max-queue 1024 --port $port \
      > "$RUN/results/http15_server.log" 2>&1 &
  pid=$!
  for _ in $(seq 900); do curl -sf "http://127.0.0.1:$port/ready" > /dev/null && break; sleep 1; done
  for n in ${HTTP_CONC:-16 64}; do
    $VV loadtest --url "http://127.0.0.1:$port" --concurrency $n --duration 30 --frames 100 \
        --out "$RUN/results/loadtest_1.5b_c$n" || break
    curl -s "http://127.0.0.1:$port/metrics" > "$RUN/results/loadtest_1.5b_c${n}_metrics.txt"
    # what the live dashboard polls, for benchmarks/dashboard_replay.py (no browser on this machine)
    curl -s "http://127.0.0.1:$port/dashboard/data?seconds=600" > "$RUN/results/dashboard_1.5b_c${n}.json"
  done
  $VV loadtest --url "http://127.0.0.1:$port" --ws --concurrency 16 --duration 20 --frames 100 \
      --out "$RUN/results/loadtest_1.5b_ws_c16"
  kill -TERM $pid; wait $pid; echo "serve exit code $?"
}
ray1() {  # vvtrt serve --ray on ONE GPU: the single-process server vs one Ray replica (the fleet's routing and
  # streaming alone) vs two replicas sharing it (0.5 GPU each, half the slots each, so the same total; RAY_MODES
  # picks), 1.5B bf16 torch, vvtrt loadtest over HTTP at rising concurrency (RAY_CONC, RAY_SLOTS). Needs Ray
  # importable (the `ray` extra; this machine has no network: carry it in /tmp/site). Results: ray1_<mode>_c<N>/
  # (loadtest.json with requests_per_replica for ray2) and the metrics after each load.
  # RAY_READY=<file>: wait (up to 15 min) for that file first: Ray installed into /tmp/site while earlier stages run
  local port=8124 pid n mode slots=${RAY_SLOTS:-64}
  for _ in $(seq 900); do [[ -z ${RAY_READY:-} || -e ${RAY_READY:-} ]] && break; sleep 1; done
  python3 -c "import ray" || { echo "ray is not importable: pip install --target /tmp/site 'ray[serve]>=2.40' elsewhere and carry it"; return 1; }
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors || return 1
  for mode in ${RAY_MODES:-single ray1 ray2}; do
    local args=(--max-streams $slots)
    [[ $mode == ray1 ]] && args=(--ray --replicas 1 --max-streams $slots)
    [[ $mode == ray2 ]] && args=(--ray --replicas 2 --max-streams $((slots / 2)))
    $VV serve -w "$RUN/wd15" --device cuda --max-context 1024 --max-queue 1024 --port $port "${args[@]}" \
        > "$RUN/results/ray1_${mode}_server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$port/ready" > /dev/null && break; kill -0 $pid 2> /dev/null || break; sleep 1; done
    for n in ${RAY_CONC:-8 32 64}; do
      $VV loadtest --url "http://127.0.0.1:$port" --concurrency $n --duration 30 --frames 100 \
          --out "$RUN/results/ray1_${mode}_c$n" || break
      curl -s "http://127.0.0.1:$port/metrics" > "$RUN/results/ray1_${mode}_c${n}_metrics.txt"
    done
    # ray2: one replica killed under 16 streams (truncation time, the other's streams and new requests, restart)
    [[ $mode == ray2 ]] && python3 benchmarks/ray_failover.py "http://127.0.0.1:$port" "$RUN/results/ray1_failover.json" \
        --streams 16 --frames 300
    # ray2: each replica's GPU ids (both the same GPU), pid, slots and requests
    curl -s "http://127.0.0.1:$port/dashboard/data?seconds=600" > "$RUN/results/ray1_${mode}_dashboard.json"
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv > "$RUN/results/ray1_${mode}_gpu_memory.csv"
    kill -TERM $pid; wait $pid; echo "$mode serve exit code $?"
  done
}
eproc() {  # vvtrt serve with the engine in a process of its own (--engine-process) against the single-process
  # server (inproc), 1.5B bf16 on one GPU (EPROC_BACKEND, default torch), vvtrt loadtest over HTTP at 64, 200 and
  # 300 clients (8 client processes). Results: <tag>_<mode>_c<N>/ (loadtest.json; tag EPROC_TAG, default eproc),
  # the metrics after each load, the server's /ready answer, and top's view of the server's processes (front and
  # engine) during each load: <tag>_<mode>_c<N>_top.txt
  local port=8125 pid n mode slots=${EPROC_SLOTS:-128} pids tag=${EPROC_TAG:-eproc}
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors || return 1
  for mode in inproc eproc; do
    local args=()
    [[ $mode == eproc ]] && args=(--engine-process)
    $VV serve -w "$RUN/wd15" --device cuda --backend ${EPROC_BACKEND:-torch} --max-streams $slots --max-context 1024 \
        --max-queue 1024 --port $port "${args[@]}" > "$RUN/results/${tag}_${mode}_server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$port/ready" > "$RUN/results/${tag}_${mode}_ready.json" && break
      kill -0 $pid 2> /dev/null || break; sleep 1; done
    for n in ${EPROC_CONC:-64 200 300}; do
      pids=$(echo $pid $(pgrep -P $pid) | tr ' ' ',')
      top -b -d 5 -n 7 -p "$pids" > "$RUN/results/${tag}_${mode}_c${n}_top.txt" 2>&1 &
      $VV loadtest --url "http://127.0.0.1:$port" --concurrency $n --duration 30 --frames 100 \
          --processes ${EPROC_CLIENT_PROCS:-8} --out "$RUN/results/${tag}_${mode}_c$n" || break
      wait $!
      curl -s "http://127.0.0.1:$port/metrics" > "$RUN/results/${tag}_${mode}_c${n}_metrics.txt"
    done
    curl -s "http://127.0.0.1:$port/dashboard/data?seconds=600" > "$RUN/results/${tag}_${mode}_dashboard.json"
    kill -TERM $pid; wait $pid; echo "$mode serve exit code $?"
  done
}
http300() {  # the HTTP target: eproc with a compiled 320-slot server under 300 clients (the work dir's compile cache,
  # cstart's, is reused); results http300_<mode>_c300/
  EPROC_TAG=http300 EPROC_BACKEND=torch-compile EPROC_SLOTS=${HTTP300_SLOTS:-320} EPROC_CONC=${HTTP300_CONC:-300} eproc
}
eprocgpu() {  # the --engine-process GPU tests (tiny long-form and tiny-realtime on CUDA: the engine process's
  # bytes equal the single-process server's; the Realtime one also through the WS text mode)
  python3 -X faulthandler -m pytest -q -rA -m gpu tests/test_serve_engine_process.py \
      tests/test_serve_engine_process_realtime.py --junitxml="$RUN/results/eprocgpu.xml" -p no:cacheprovider
}
rows() {  # decode attention at each row's own length ("rows": FlashAttention variable-length) against the bucket
  # ("gemm"), one layer of 1.5B shapes: short/mixed/long rows at 64/128/256 streams, and rows filling a 64k
  # bucket at 1/4/16/64 streams; then the decode kernels' GPU tests (each kernel against SDPA, past-length
  # slots poisoned, CUDA graph replay; rows against its CPU path)
  local rc=0
  python3 benchmarks/rows_attention_bench.py "$RUN/results/rows_attention.json" || rc=1
  python3 benchmarks/rows_attention_bench.py "$RUN/results/rows_attention_full.json" --mixes full \
      --streams 1,4,16,64 --bucket 65536 || rc=1  # one or a few streams at a long context
  python3 -X faulthandler -m pytest -q -rA -m gpu tests/test_longform_gpu.py --junitxml="$RUN/results/rows_tests.xml" \
      -p no:cacheprovider || rc=1
  return $rc
}
srvrows() {  # compiled serving, held 1.5B streams of mixed prompt lengths (one in three of 3000 words, KV up to
  # 8192): the decode kernel at each row's own length ("rows") against the bucket ("gemm"), same GPU, same call
  local k
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors || return 1
  for k in rows gemm; do
    VVTRT_DECODE_KERNEL=$k $VV bench-serving -w "$RUN/wd15" --device cuda --backend torch-compile --mode concurrency \
        --levels ${SRVMIX_LEVELS:-128} --prompt-words 8,48,3000 --requests ${SRVMIX_REQUESTS:-256} --frames 64 \
        --max-streams 128 --max-context 8192 --out "$RUN/results/serving_1.5b_mix_compiled_$k"
  done
}
dcost() {  # where long-context decode time goes: lm_decode by KV bucket and valid length, attention kernels
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors &&
  python3 benchmarks/decode_cost.py "$RUN/wd15" "$RUN/results/decode_cost_1.5b.json" ${DCOST_ARGS:-}
}
ctx15() {  # long-form decode cost against context only (the contexts phase of long15), default decode kernel
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors &&
  python3 benchmarks/longform.py "$RUN/wd15" "$RUN/results/longform_1.5b_contexts" --device cuda --phases contexts
}
rtpar() {  # Realtime-0.5B through the CLI verbs: bf16 export, parity on CUDA (torch, ORT), a synth
  local rc=0
  $VV export --model realtime-0.5b -w "$RUN/wdrt" --dtype bf16 || return 1
  $VV parity -w "$RUN/wdrt" --backend torch --device cuda --dtype bf16 --json "$RUN/results/parity_rt_torch_cuda_bf16.json" || rc=1
  $VV parity -w "$RUN/wdrt" --backend onnxruntime --device cuda --dtype bf16 --json "$RUN/results/parity_rt_ort_cuda_bf16.json" || rc=1
  $VV synth -w "$RUN/wdrt" --backend torch --device cuda --text "Hello from the H100." --frames 30 -o "$RUN/results/rt_torch.wav" || rc=1
  return $rc
}
rtx() { $VV export --model realtime-0.5b -w "$RUN/wdrt" --dtype bf16; }  # CPU-bound: run it beside gpu8 ("rtx+gpu8")
gpu8() {  # the GPU tests of the gemm kernels and the Realtime loop, a process per file: gemm decode kernels (long-form, Realtime),
  # the compiled + graphed Realtime loop, the Realtime runtime, the compiled long-form checks of test_gpu.py
  local rc=0 i=0 t
  export VVTRT_TINY_WORKDIR="$RUN/wd_tiny_tests"
  for t in tests/test_realtime_compiled_gpu.py tests/test_longform_gpu.py tests/test_realtime_runtime.py \
           "tests/test_gpu.py -k compiled"; do i=$((i + 1))
    python3 -X faulthandler -m pytest -q -rA -m gpu $t --junitxml="$RUN/results/gpu8_$i.xml" -p no:cacheprovider || { rc=1; echo "FAILED: $t"; }
  done
  return $rc
}
rtserve() {  # vvtrt serve on the Realtime work dir (bf16, torch, CUDA graphs) + vvtrt loadtest, HTTP and WS
  local port=8124 pid n
  $VV serve -w "$RUN/wdrt" --device cuda --max-streams ${RT_SLOTS:-256} --max-context 1024 --max-queue 1024 --port $port \
      > "$RUN/results/rtserve_server.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/ready" > /dev/null && break; sleep 1; done
  for n in ${RT_CONC:-1 64 256}; do
    $VV loadtest --url "http://127.0.0.1:$port" --concurrency $n --duration 20 --frames 40 \
        --text "Streaming speech starts after the first few words." --out "$RUN/results/rt_loadtest_c$n" || break
  done
  $VV loadtest --url "http://127.0.0.1:$port" --ws --concurrency 64 --duration 20 --frames 40 \
      --text "Streaming speech starts after the first few words." --out "$RUN/results/rt_loadtest_ws_c64"
  curl -s "http://127.0.0.1:$port/metrics" > "$RUN/results/rt_loadtest_metrics.txt"
  kill -TERM $pid; wait $pid; echo "serve exit code $?"
}
prof15() {  # where the serving step goes by batch, 1.5B bf16 torch, the serving engine's loop
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors &&
  python3 benchmarks/serving_step_profile.py "$RUN/wd15" "$RUN/results/serving_step_1.5b" --device cuda \
      --batches ${PROF_BATCHES:-1,64,128,256} --max-context 1024 --repeats 10 --backend ${PROF_BACKEND:-torch}
}
srv15() {  # serving engine: held concurrency, independent requests of 3 prompt lengths, 1.5B bf16
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors &&
  $VV bench-serving -w "$RUN/wd15" --device cuda --mode concurrency --levels ${SRV_LEVELS:-1,16,32,64,96,128,192} --prompt-words ${SRV_WORDS:-8,48,96} \
      --requests 32 --frames 64 --max-streams 256 --max-context 1024 --out "$RUN/results/serving_1.5b"
}
srv7() {  # the same for 7B
  $VV export --model 7b -w "$RUN/wd7" --dtype bf16 --components connectors &&
  $VV bench-serving -w "$RUN/wd7" --device cuda --backend ${SRV7_BACKEND:-torch} --mode concurrency --levels ${SRV7_LEVELS:-1,16,64,150,200} \
      --prompt-words ${SRV_WORDS:-8,48,96} --requests 32 --frames 64 --max-streams 256 --max-context 1024 --out "$RUN/results/serving_7b"
}
# The serving core against a baseline tree (BASE, default .baseline: a `git archive` of the commit to compare
# with), both in this call on the same GPU: held 1.5B streams at 1/128/256 with prompts of 8/48/96 words, then
# 64 streams with a long prompt (3000 words, several prefill chunks) among short ones.
srvcore() {
  local base=${BASE:-$PWD/.baseline} tree
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors || return 1
  for tree in new base; do
    local pp=/tmp/site:$PWD commit=${VVTRT_GIT_COMMIT:-}
    [[ $tree == base ]] && pp=/tmp/site:$base commit=${BASE_COMMIT:-unknown}
    VVTRT_GIT_COMMIT=$commit PYTHONPATH=$pp python3 -m vvtrt bench-serving -w "$RUN/wd15" --device cuda --mode concurrency \
        --levels ${SRV_LEVELS:-1,128,256} --prompt-words 8,48,96 --requests 32 --frames 64 --max-streams 256 \
        --max-context 1024 --out "$RUN/results/serving_1.5b_$tree"
  done
}
srvlong() {  # 64 held streams, one prompt in three of 3000 words (several prefill chunks) among short ones
  local base=${BASE:-$PWD/.baseline} tree
  for tree in new base; do
    local pp=/tmp/site:$PWD commit=${VVTRT_GIT_COMMIT:-}
    [[ $tree == base ]] && pp=/tmp/site:$base commit=${BASE_COMMIT:-unknown}
    VVTRT_GIT_COMMIT=$commit PYTHONPATH=$pp python3 -m vvtrt bench-serving -w "$RUN/wd15" --device cuda --mode concurrency --levels 64 \
        --prompt-words 8,48,3000 --requests 64 --frames 64 --max-streams 64 --max-context 8192 \
        --out "$RUN/results/serving_1.5b_long_$tree"
  done
}
srvmix() {  # held streams of mixed prompt lengths (one in three of 3000 words, KV up to 8192), 1.5B bf16: the
  # step split in two KV groups (short streams at their own KV bucket) against one group, same GPU, same call
  local g
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors || return 1
  for g in 2 1; do
    $VV bench-serving -w "$RUN/wd15" --device cuda --mode concurrency --levels ${SRVMIX_LEVELS:-128} \
        --prompt-words 8,48,3000 --requests ${SRVMIX_REQUESTS:-256} --frames 64 --max-streams 128 \
        --max-context 8192 --kv-groups $g --out "$RUN/results/serving_1.5b_mix_g$g"
  done
}
cstart() {  # compiled serving (1.5B bf16, torch-compile): time to /ready of a cold start (empty compile cache) and a
  # warm one (the cache the first wrote), each start's own record from /ready and /metrics; then bench-serving compiled
  # at 1/128/256/400 held streams
  local port=8125 pid i t0 t1 ms
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors || return 1
  rm -rf "$RUN/wd15/compile-cache"
  for i in cold warm; do
    t0=$(date +%s.%N)
    $VV serve -w "$RUN/wd15" --device cuda --backend torch-compile --max-streams 256 --max-context 1024 --port $port \
        > "$RUN/results/cstart_${i}_server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1800); do curl -sf "http://127.0.0.1:$port/ready" > "$RUN/results/cstart_${i}_ready.json" && break
      kill -0 $pid 2> /dev/null || break; sleep 0.5; done
    t1=$(date +%s.%N); ms=$(python3 -c "print(round(($t1 - $t0) * 1000))")
    python3 -c "import json, sys; json.dump({'start': sys.argv[1], 'process_to_ready_ms': int(sys.argv[2]),
'git_commit': sys.argv[3] or None, 'gpu_name': sys.argv[4]}, sys.stdout)" "$i" "$ms" "${VVTRT_GIT_COMMIT:-}" \
        "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)" > "$RUN/results/cstart_${i}_time.json"
    curl -s "http://127.0.0.1:$port/metrics" | grep -E "vvtrt_(startup_seconds|compile_cache)" > "$RUN/results/cstart_${i}_metrics.txt"
    echo "$i start: $ms ms to /ready: $(cat "$RUN/results/cstart_${i}_ready.json")"
    kill -TERM $pid; wait $pid; echo "serve exit code $?"
  done
  du -sh "$RUN/wd15/compile-cache"
  # up to 400 held streams (the engine target): batch buckets to 256 are the server's (cached), 400 compiles here
  $VV bench-serving -w "$RUN/wd15" --device cuda --backend torch-compile --mode concurrency \
      --levels ${CSTART_LEVELS:-1,128,256,400} --prompt-words 8,48,96 --requests 32 --frames 64 --max-streams 400 \
      --max-context 1024 --out "$RUN/results/serving_1.5b_compiled"
}
gpusrv() { python3 -m pytest -q -rA -s -m gpu tests/test_serving_gpu.py tests/test_compiled_serving_gpu.py tests/test_noise.py tests/test_kv_groups.py tests/test_realtime_noise.py tests/test_conv_fast.py -p no:cacheprovider; }
gpunoise() {  # device noise: CUDA bits == CPU bits, the draw in a CUDA graph, the captured serving step's noise
  python3 -m pytest -q -rA -m gpu tests/test_noise.py tests/test_serving_gpu.py -p no:cacheprovider
}
noise15() {  # the serving step's host work (device noise, on-device stops, one status read-back) by batch, 1.5B
  # bf16: this tree with --noise device and host, then the baseline tree (BASE), all on this GPU
  local base=${BASE:-$PWD/.baseline} nz
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors || return 1
  for nz in device host; do
    python3 benchmarks/serving_step_profile.py "$RUN/wd15" "$RUN/results/serving_step_noise_$nz" --device cuda \
        --batches ${PROF_BATCHES:-1,64,256} --max-context 1024 --repeats 10 --noise $nz || return 1
  done
  (cd "$base" && VVTRT_GIT_COMMIT=${BASE_COMMIT:-unknown} PYTHONPATH=/tmp/site:$base python3 benchmarks/serving_step_profile.py \
      "$RUN/wd15" "$RUN/results/serving_step_noise_base" --device cuda --batches ${PROF_BATCHES:-1,64,256} \
      --max-context 1024 --repeats 10)
}
rtcore() {  # the Realtime engine bench (random-weight 0.5B, eager + CUDA graphs), this commit and the baseline; this
  # commit also at 256 streams through one stepper (its component table: the decoder step at 256) and 768 engine streams
  local base=${BASE:-$PWD/.baseline} tree batches streams
  for tree in new base; do
    local root=$PWD commit=${VVTRT_GIT_COMMIT:-}
    batches=${RTCORE_BATCHES:-1,256} streams=${RTCORE_STREAMS:-256,512,768}
    [[ $tree == base ]] && root=$base commit=${BASE_COMMIT:-unknown} batches=1 streams=256,512
    (cd "$root" && VVTRT_GIT_COMMIT=$commit PYTHONPATH=/tmp/site:$root python3 benchmarks/realtime_bench.py --out "$RUN/results/realtime_$tree" \
        --batches $batches --engine-streams $streams)
  done
}
# This tree against the baseline tree, alternating, AB_REPEATS times each in one call: 1.5B held streams at
# AB_LEVELS (as srvcore) and the Realtime engine at AB_RT_STREAMS (as rtcore): run-to-run spread beside the
# difference (serving_ab_<tree>_<i>/, realtime_ab_<tree>_<i>/; `python benchmarks/ab_summary.py` tabulates them).
ab() {
  local base=${BASE:-$PWD/.baseline} tree i
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors || return 1
  for i in $(seq ${AB_REPEATS:-3}); do
    for tree in new base; do
      local root=$PWD commit=${VVTRT_GIT_COMMIT:-}
      [[ $tree == base ]] && root=$base commit=${BASE_COMMIT:-unknown}
      (cd "$root" && export VVTRT_GIT_COMMIT=$commit PYTHONPATH=/tmp/site:$root &&
        python3 -m vvtrt bench-serving -w "$RUN/wd15" --device cuda --mode concurrency --levels ${AB_LEVELS:-128,256} \
          --prompt-words 8,48,96 --requests 32 --frames 64 --max-streams 256 --max-context 1024 \
          --out "$RUN/results/serving_ab_${tree}_$i" &&
        python3 benchmarks/realtime_bench.py --out "$RUN/results/realtime_ab_${tree}_$i" --batches 1 \
          --engine-streams ${AB_RT_STREAMS:-256,512})
    done
  done
}
srvrate() {  # independent requests spread in time (Poisson arrivals at SRVRATE_LEVELS requests/s), not a burst:
  # 1.5B bf16, compiled by default (run it after cstart, whose compile cache it reuses); the report's active_streams
  # is the concurrency each rate held (Little's law: rate x a request's time in the engine)
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors &&
  $VV bench-serving -w "$RUN/wd15" --device cuda --backend ${SRVRATE_BACKEND:-torch-compile} --mode rate \
      --levels ${SRVRATE_LEVELS:-40,80,120} --prompt-words 8,48,96 --requests ${SRVRATE_REQUESTS:-1200} --frames 64 \
      --max-streams 512 --max-context 1024 --out "$RUN/results/serving_1.5b_rate"
}
srvpipe() {  # the pipelined step (--pipeline: each step launched before the last one is read) against the plain one,
  # 1.5B bf16 held streams of 8/48/96-word prompts, same GPU, same call (compiled by default: run it after cstart,
  # whose compile cache it reuses)
  local p
  $VV export --model 1.5b -w "$RUN/wd15" --dtype bf16 --components connectors || return 1
  for p in pipe plain; do
    local args=()
    [[ $p == pipe ]] && args=(--pipeline)
    $VV bench-serving -w "$RUN/wd15" --device cuda --backend ${SRVPIPE_BACKEND:-torch-compile} --mode concurrency \
        --levels ${SRVPIPE_LEVELS:-1,128,400} --prompt-words 8,48,96 --requests 32 --frames 64 --max-streams 400 \
        --max-context 1024 "${args[@]}" --out "$RUN/results/serving_1.5b_$p"
  done
}
gpucore() {  # the serving core's GPU tests (interleaving bit-exact with fixed shapes, the bf16 bound, the captured
  # step's noise) and the packed prefill's attention kernel against its CPU sequences
  local rc=0
  python3 -X faulthandler -m pytest -q -rA -m gpu tests/test_serving_gpu.py --junitxml="$RUN/results/gpucore_serving.xml" \
      -p no:cacheprovider || rc=1
  python3 -X faulthandler -m pytest -q -rA -m gpu tests/test_longform_gpu.py -k "packed or rows_attention" \
      --junitxml="$RUN/results/gpucore_packed.xml" -p no:cacheprovider || rc=1
  return $rc
}
rtnoise() {  # Realtime engine with device noise and on-device stops: the GPU tests (CUDA graph step's noise ==
  # the CPU's, graphs == eager), then the engine bench at 256/512/768 streams (this tree; RTNOISE_BASE=1 also
  # runs the same with --noise host, the host draws, on this GPU)
  local rc=0
  python3 -m pytest -q -rA -m gpu tests/test_realtime_noise.py tests/test_realtime_runtime.py tests/test_noise.py \
      --junitxml="$RUN/results/rtnoise_tests.xml" -p no:cacheprovider || rc=1
  python3 benchmarks/realtime_step_profile.py --device cuda --dtype bf16 --preset realtime-0.5b --batches 1,64,256 \
      --noise device --out "$RUN/results/realtime_step_profile_device.json" || rc=1
  python3 benchmarks/realtime_bench.py --out "$RUN/results/realtime_devnoise" --batches 1 --engine-streams 256,512,768 || rc=1
  if [[ ${RTNOISE_BASE:-0} == 1 ]]; then
    python3 benchmarks/realtime_bench.py --out "$RUN/results/realtime_hostnoise" --batches 1 \
        --engine-streams 256,512,768 --noise host || rc=1
  fi
  return $rc
}
convb() {  # the streaming conv steps alone: exported ops vs the channels-last fast path, compiled + CUDA graphs,
  # bf16, batches 1..512 (1.5B decoder + semantic encoder, Realtime-0.5B decoder: the 1.5B decoder's shapes,
  # so its compiles mostly hit inductor's cache); the channels-last path without the Triton feed-forward at
  # 256 (what the kernel itself buys); then the GPU tests of the fast path
  local rc=0
  python3 benchmarks/conv_step_bench.py "$RUN/results/conv_step_1.5b.json" --configs 1.5b --paths exported,fast || rc=1
  python3 benchmarks/conv_step_bench.py "$RUN/results/conv_step_rt.json" --configs realtime-0.5b --paths exported,fast || rc=1
  python3 benchmarks/conv_step_bench.py "$RUN/results/conv_step_torchffn.json" --configs 1.5b --batches 256 \
      --paths fast-torch || rc=1
  python3 -m pytest -q -rA -m gpu tests/test_conv_fast.py tests/test_gpu.py -k "conv" -p no:cacheprovider || rc=1
  return $rc
}
# Quantization (README: Quantization): bf16 vs int8 vs fp8 of one model. Exports a work dir per mode (every
# component in bf16; --quant adds the Q/DQ GEMMs of lm_decode and the diffusion head), runs the quality gate
# (vvtrt parity: ONNX Runtime CUDA, then the torch path, whose result stays in quant_gate.json), builds the
# quantized engines with full TensorRT (layer report in the manifest), then one bench with the three work dirs
# side by side (torch-compile and tensorrt variants). $1: model preset, $2: results tag.
quant_stage() {  # the exports are CPU-bound: with $3 = 1 the two quantized ones run side by side (memory: 1.5B only;
  # the bf16 one, for the bench's torch-compile baseline, needs only the connectors graph)
  local model=$1 tag=$2 side=${3:-0} rc=0 q wd
  $VV export --model $model -w "$RUN/wdq${tag}_none" --dtype bf16 --components connectors || return 1
  for q in int8 fp8; do
    if [[ $side == 1 ]]; then
      $VV export --model $model -w "$RUN/wdq${tag}_$q" --dtype bf16 --quant $q > "$RUN/results/export_${tag}_$q.log" 2>&1 &
    fi
  done
  wait
  for q in int8 fp8; do
    wd="$RUN/wdq${tag}_$q"
    [[ $side == 1 ]] && tail -n 3 "$RUN/results/export_${tag}_$q.log"
    $VV export --model $model -w "$wd" --dtype bf16 --quant $q || { rc=1; continue; }  # up to date: a check
    $VV parity -w "$wd" --backend onnxruntime --device cuda --dtype bf16 --json "$RUN/results/parity_${tag}_${q}_ort_cuda.json" || rc=1
    $VV build -w "$wd" --flavor tensorrt --dtype bf16 --components lm_decode,diffusion_sampler,diffusion_head || rc=1
    cp "$wd"/engines/*/manifest.json "$RUN/results/manifest_${tag}_${q}.json" 2>/dev/null
    $VV parity -w "$wd" --backend torch --device cuda --dtype bf16 --json "$RUN/results/parity_${tag}_${q}_torch_cuda.json" || rc=1
    cp "$wd/quant_gate.json" "$RUN/results/quant_gate_${tag}_${q}.json" 2>/dev/null
  done
  $VV bench -w "$RUN/wdq${tag}_none" --compare-workdir "$RUN/wdq${tag}_int8" --compare-workdir "$RUN/wdq${tag}_fp8" \
      --backend torch-compile --device cuda --dtype bf16 --frames 60 --prompt-tokens 512 --repeats 3 \
      --out "$RUN/results/bench_${tag}_quant" || rc=1
  python3 -m pytest -q -rA -m gpu tests/test_quant.py -p no:cacheprovider || rc=1
  return $rc
}
q15() { quant_stage 1.5b 1.5b 1; }
q7() { quant_stage 7b 7b; }
STAGE_NAMES=" ab srvrate srvpipe gpucore http300 rows srvrows eproc eprocgpu rtnoise srvmix q15 q7 gpunoise noise15 ray1 convb cstart srvcore srvlong gpusrv rtcore rtx gpu8 rtserve rtc rtce rtcli ortfix dcost ctx15 rtpar prof15 srv15 srv7 long15 rt http15 env gputests tiny b15 b15k5 b15x b7 b7k5 b15par b15ort b15tune b15ortk5 b7ort b7ortk5 prof tf32 x7 x15 x15k5 "
run_stage() {
  local fn=$1; [[ $fn == env ]] && fn=env_check
  if [[ $STAGE_NAMES == *" $1 "* ]]; then stage "$1" "$fn"; else log "unknown stage $1"; fi
}
# "a+b" runs stages a and b at the same time (for exports, which use the CPU, beside GPU work; never
# put two timed benches in one group, nor two stages that write one workdir, like x7+b7ort)
for s in $STAGES; do
  if [[ $s == *+* ]]; then
    for part in ${s//+/ }; do run_stage "$part" & done; wait
  else
    run_stage "$s"
  fi
done
log "ALL DONE"
