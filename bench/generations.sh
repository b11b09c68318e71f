#!/usr/bin/env bash
# Both protocol generations side by side: the same server, the same workload, 0.9 and 0.8 runs
# interleaved (so both see the same machine noise). Usage: bench/generations.sh [REPEATS] [DATA]
# Per repeat and generation: pp (producer) and pc (consumer, prefilled by the bench), DATA of
# 1000 B x 250 messages per batch each (default 8GB). Reports and console output go to
# .bench-tmp/gen/; the summary (medians over the repeats, 0.9/0.8 ratios) to stdout.
set -u
cd "$(dirname "$0")/.."
REPEATS=${1:-3}; DATA=${2:-8GB}
OUT=.bench-tmp/gen; rm -rf "$OUT"; mkdir -p "$OUT"
ADDR=127.0.0.1:18193
COMMON="--server-address $ADDR --message-size 1000 --messages-per-batch 250 --warmup-time 1s --no-progress --total-data $DATA"
for n in $(seq 1 "$REPEATS"); do
  for proto in 0.9 0.8; do
    dir=.bench-tmp/gen-data; rm -rf "$dir"
    .venv/bin/python -m tidelog serve --data-dir "$dir" --tcp-address $ADDR >> "$OUT/server.log" 2>&1 &
    SERVER=$!; sleep 2
    for mode in pp pc; do
      .venv/bin/tidelog bench $mode $COMMON --protocol $proto --output "$OUT/$mode-$proto-$n" \
        > "$OUT/$mode-$proto-$n.txt" 2>&1
    done
    kill -TERM $SERVER; wait $SERVER; rm -rf "$dir"
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
for report in sorted(Path(sys.argv[1]).glob("*/report.json")):
    mode, proto, _ = report.parent.name.split("-")
    summary = json.loads(report.read_text())["group_metrics"][0]["summary"]
    runs.setdefault((mode, proto), []).append(
        (summary["total_throughput_messages_per_second"], summary["total_throughput_megabytes_per_second"],
         summary["p99_latency_ms"])
    )
print(f"{'mode':5} {'0.9 msg/s':>12} {'0.8 msg/s':>12} {'0.9/0.8':>8} {'0.9 p99':>8} {'0.8 p99':>8}  (medians, n={len(runs.get(('pp', '0.9'), []))})")
for mode in ("pp", "pc"):
    new, old = runs.get((mode, "0.9"), []), runs.get((mode, "0.8"), [])
    if not new or not old:
        continue
    nm, om = statistics.median(r[0] for r in new), statistics.median(r[0] for r in old)
    npp, opp = statistics.median(r[2] for r in new), statistics.median(r[2] for r in old)
    print(f"{mode:5} {nm:12,.0f} {om:12,.0f} {nm / om:8.2f} {npp:8.2f} {opp:8.2f}")
PY
