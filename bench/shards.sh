#!/usr/bin/env bash
# One shard against two (docs/benchmarks.md "One shard against two"): per round and shard
# count a fresh server, then pp, pc, pp -p 2 and bp -p 2 -a 2 at $DATA (default 1GB) each;
# $ROUNDS (default 3) interleaved rounds. Prints "shards mode msg/s" lines; reports and server
# logs go to .bench-tmp/shards/ (git-ignored).
set -u
cd "$(dirname "$0")/.."
OUT=.bench-tmp/shards; rm -rf "$OUT"; mkdir -p "$OUT"
DATA=${DATA:-1GB}; ROUNDS=${ROUNDS:-3}; PORT=${PORT:-18192}
COMMON="--server-address 127.0.0.1:$PORT --message-size 1000 --messages-per-batch 250 --warmup-time 0.5s --total-data $DATA --no-progress"
for round in $(seq 1 "$ROUNDS"); do
  for shards in 1 2; do
    dir=$OUT/data-$shards-$round
    .venv/bin/tidelog serve --shards "$shards" --data-dir "$dir" --tcp-address 127.0.0.1:$PORT > "$OUT/server-$shards-$round.log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do grep -q "listening on" "$OUT/server-$shards-$round.log" && break; sleep 0.1; done
    for run in "pp" "pc" "pp -p 2" "bp -p 2 -a 2"; do
      name="$shards-${run// /_}-$round"
      .venv/bin/tidelog bench $run $COMMON --output "$OUT/$name" > "$OUT/$name.txt" 2>&1
      rate=$(grep -m1 "total msg/s" "$OUT/$name.txt" | grep -oE "[0-9][0-9,]+" | head -1)
      p99=$(grep -m1 "p99 latency" "$OUT/$name.txt" | grep -oE "[0-9]+\.[0-9]+" | head -1)
      echo "$shards shards | $run | ${rate:-failed} msg/s | p99 ${p99:-?} ms"
    done
    kill -TERM $server; wait $server
    rm -rf "$dir"
  done
done
