#!/usr/bin/env bash
# A/B: the same bench client against the server of two source trees, interleaved run by run, so
# both sides see the same machine noise. Usage: bench/ab_compare.sh BASE_SRC [REPEATS]
#   BASE_SRC: the src/ folder of the other tree (e.g. a `git worktree add` of an older commit,
#   with the built _stamp*.so copied into its src/tidelog/). This tree's src/ is the B side.
# Per run: pp (1 GB of 1000 B x 250), pc (1 GB, prefilled by the bench), and pp under
# --fsync always (512 MB). Reports and console output go to .bench-tmp/ab/; the summary (medians
# over the runs, B/A ratios) to stdout. Environment: BENCH_ARGS adds bench flags to every run
# (e.g. "--protocol 0.8" against a tree that predates 0.9), DATA sets the pp/pc volume (1GB).
set -u
cd "$(dirname "$0")/.."
BASE_SRC=$(cd "$1" && pwd); REPEATS=${2:-3}
OUT=.bench-tmp/ab; rm -rf "$OUT"; mkdir -p "$OUT"
ADDR=127.0.0.1:18192
COMMON="--server-address $ADDR --message-size 1000 --messages-per-batch 250 --warmup-time 0.5s --no-progress ${BENCH_ARGS:-}"
DATA=${DATA:-1GB}
serve() {  # $1 side, $2 data dir, rest: extra args
  local side=$1 dir=$2; shift 2
  local path=src; [ "$side" = A ] && path=$BASE_SRC
  PYTHONPATH=$path .venv/bin/python -m tidelog serve --data-dir "$dir" --tcp-address $ADDR "$@" \
    >> "$OUT/server-$side.log" 2>&1 &
  SERVER=$!; sleep 2
}
stop() { kill -TERM $SERVER; wait $SERVER; }
for n in $(seq 1 "$REPEATS"); do
  for side in A B; do
    dir=.bench-tmp/ab-data-$side; rm -rf "$dir"
    serve $side $dir
    .venv/bin/tidelog bench pp $COMMON --total-data $DATA --output $OUT/$side-pp-$n > $OUT/$side-pp-$n.txt 2>&1
    .venv/bin/tidelog bench pc $COMMON --total-data $DATA --output $OUT/$side-pc-$n > $OUT/$side-pc-$n.txt 2>&1
    stop; rm -rf "$dir"
    serve $side $dir --fsync always
    .venv/bin/tidelog bench pp $COMMON --total-data 512MB --output $OUT/$side-pp-always-$n > $OUT/$side-pp-always-$n.txt 2>&1
    stop; rm -rf "$dir"
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
runs = {}
for report in sorted(Path(sys.argv[1]).glob("*/report.json")):
    side, _, rest = report.parent.name.partition("-")
    mode = rest.rsplit("-", 1)[0]
    summary = json.loads(report.read_text())["group_metrics"][0]["summary"]
    runs.setdefault((mode, side), []).append(
        (summary["total_throughput_messages_per_second"], summary["p99_latency_ms"])
    )
print(f"{'mode':10} {'A msg/s':>12} {'B msg/s':>12} {'B/A':>6} {'A p99 ms':>9} {'B p99 ms':>9}  (medians)")
for mode in sorted({m for m, _ in runs}):
    a, b = runs.get((mode, "A"), []), runs.get((mode, "B"), [])
    if not a or not b:
        continue
    am, bm = statistics.median(r[0] for r in a), statistics.median(r[0] for r in b)
    ap, bp = statistics.median(r[1] for r in a), statistics.median(r[1] for r in b)
    print(f"{mode:10} {am:12,.0f} {bm:12,.0f} {bm / am:6.2f} {ap:9.2f} {bp:9.2f}")
PY
