#!/usr/bin/env bash
# The serving stages of gpu_all.sh (sourced by it: its log/stage helpers, $VV and $RUN): HTTP servers and load
# tests, the serving engine's benches and GPU tests, the Ray fleet, compiled start-up, the Realtime engine.
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
wd7x() { $VV export --model 7b -w "$RUN/wd7" --dtype bf16 --components connectors; }  # CPU: bg:wd7x beside GPU work
prof7() {  # the same for 7B at the held concurrencies of its target (the step of 120 streams: where it goes)
  wait_bg wd7x
  wd7x &&  # up to date where bg:wd7x made it: a check
  python3 benchmarks/serving_step_profile.py "$RUN/wd7" "$RUN/results/serving_step_7b" --device cuda \
      --batches ${PROF7_BATCHES:-1,64,120} --max-context 1024 --repeats 10 --backend ${PROF_BACKEND:-torch}
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
gpurest() {  # the serving throughput work's GPU tests that no run has passed yet: compiled serving (compile cache
  # reuse), KV groups on CUDA graphs, the conv fast path compiled on CUDA and the Triton feed-forward
  # (GPUREST_TESTS: other test files)
  python3 -X faulthandler -m pytest -q -rA -s -m gpu \
      ${GPUREST_TESTS:-tests/test_compiled_serving_gpu.py tests/test_kv_groups.py tests/test_conv_fast.py} \
      --junitxml="$RUN/results/gpurest.xml" -p no:cacheprovider
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
  # bf16, batches 1..512 (Realtime-0.5B decoder first, then 1.5B decoder + semantic encoder); the channels-last
  # path without the Triton feed-forward at 256 (what the kernel itself buys); then the GPU tests of the fast path
  # (CONVB_BATCHES: fewer batch sizes, fewer compiles: each is a compile per path and component)
  local rc=0 b=${CONVB_BATCHES:-1,64,256,512}
  python3 benchmarks/conv_step_bench.py "$RUN/results/conv_step_rt.json" --configs realtime-0.5b --paths exported,fast \
      --batches $b || rc=1
  python3 benchmarks/conv_step_bench.py "$RUN/results/conv_step_1.5b.json" --configs 1.5b --paths exported,fast \
      --batches $b || rc=1
  python3 benchmarks/conv_step_bench.py "$RUN/results/conv_step_torchffn.json" --configs 1.5b --batches 256 \
      --paths fast-torch || rc=1
  python3 -m pytest -q -rA -m gpu tests/test_conv_fast.py tests/test_gpu.py -k "conv" -p no:cacheprovider || rc=1
  return $rc
}
