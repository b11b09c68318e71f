#!/usr/bin/env bash
# The runs behind docs/benchmarks.md "Results": the "Reproducing" commands end to end.
# Scratch data and reports go to .bench-tmp/ (git-ignored); takes ~6 minutes on 2 cores.
set -u
cd "$(dirname "$0")/.."
OUT=.bench-tmp/runs; rm -rf "$OUT"; mkdir -p "$OUT" .bench-tmp
run_server() {  # $1 data dir, rest: extra args
  local dir=$1; shift
  rm -rf "$dir"; .venv/bin/tidelog serve --data-dir "$dir" --tcp-address 127.0.0.1:18191 "$@" > "$OUT/server-$(basename $dir).log" 2>&1 &
  SERVER=$!; sleep 2
}
COMMON="--server-address 127.0.0.1:18191 --message-size 1000 --messages-per-batch 250 --total-data 1GB --warmup-time 0.5s --ceilings --ceiling-dir .bench-tmp --no-progress"
run_server .bench-tmp/data-default
for m in pp pc ppc; do for i in 1 2 3; do .venv/bin/tidelog bench $m $COMMON --remark default --output $OUT/$m-$i > $OUT/$m-$i.txt 2>&1; done; done
kill -TERM $SERVER; wait $SERVER
run_server .bench-tmp/data-fsync --fsync always
for i in 1 2 3; do .venv/bin/tidelog bench pp $COMMON --remark fsync=always --output $OUT/pp-fsync-always-$i > $OUT/pp-fsync-always-$i.txt 2>&1; done
kill -TERM $SERVER; wait $SERVER
mkdir -p .bench-tmp; printf "[system]\nio = \"direct\"\n" > .bench-tmp/direct.toml
run_server .bench-tmp/data-fsync-direct --fsync always --config .bench-tmp/direct.toml
for i in 1 2 3; do .venv/bin/tidelog bench pp $COMMON --remark "fsync=always io=direct" --output $OUT/pp-fsync-direct-$i > $OUT/pp-fsync-direct-$i.txt 2>&1; done
kill -TERM $SERVER; wait $SERVER
for i in 1 2 3; do .venv/bin/python bench/redis_streams.py --message-size 1000 --messages-per-batch 250 --message-batches 4000 > $OUT/redis-$i.txt 2>&1; done
echo MATRIX DONE
