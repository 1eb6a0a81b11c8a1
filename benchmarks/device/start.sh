#!/usr/bin/env bash
# Install the carried wheels (if any) and start gpu_all.sh in its own session, so it outlives this call.
set -u
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
RUN=${RUN:-/root/vvtrt-run}; mkdir -p "$RUN"; : > "$RUN/progress.log"
STAGES="${STAGES:-env gputests tiny b15 b15ort b7}" RUN=$RUN setsid nohup bash benchmarks/device/gpu_all.sh > "$RUN/driver.log" 2>&1 < /dev/null &
sleep "${1:-60}"; bash benchmarks/device/poll.sh 1
