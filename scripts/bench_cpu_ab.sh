#!/bin/sh
# CPU time (perf stat task-clock, ms) of the same `tokenlens bench` command under two binaries,
# alternating, one thread: on a shared, oversubscribed machine the work a change saves shows in
# CPU time far more steadily than in wall time. Prints one line per run; compare per round.
# Usage: scripts/bench_cpu_ab.sh OLD NEW ROUNDS -- BENCH_ARGS...
old=$1 new=$2 rounds=$3
shift 4
i=0
while [ "$i" -lt "$rounds" ]; do
    if [ $((i % 2)) -eq 0 ]; then order="$old $new"; else order="$new $old"; fi
    for b in $order; do
        ms=$(RAYON_NUM_THREADS=1 perf stat -x, -e task-clock "$b" bench "$@" 2>&1 >/dev/null | grep task-clock | cut -d, -f1)
        echo "round $i $b $ms"
    done
    i=$((i + 1))
done
