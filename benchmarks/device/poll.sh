#!/usr/bin/env bash
# Wait up to $1 seconds for the background run (or until it finishes), then pack its results into $OUT.
RUN=${RUN:-/root/vvtrt-run}
end=$((SECONDS + ${1:-300}))
while (( SECONDS < end )) && ! grep -q "ALL DONE" "$RUN/progress.log" 2>/dev/null; do sleep 5; done
cat "$RUN/progress.log"
tail -n 5 "$RUN"/results/*.log 2>/dev/null | tail -n 60
tar -czf "$OUT/results.tgz" -C "$RUN" results progress.log --exclude='*.wav' 2>/dev/null
cp "$RUN"/results/*.wav "$OUT/" 2>/dev/null; ls -la "$OUT"
