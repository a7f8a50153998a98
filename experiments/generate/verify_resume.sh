#!/bin/bash
# Same-seed hash check and kill/resume check, via the CLI.
set -u
cd "$(dirname "$0")/../.."
PY=${PY:-/work/main/.venv/bin/python}
mkdir -p /tmp/verify
rm -rf /tmp/verify/a /tmp/verify/b /tmp/verify/c
echo "start $(date -u +%T)"
nice -n 19 $PY -m hepattr_jax generate top_qcd --n 40 --seed 5 --shard-size 10 --out /tmp/verify/a --quiet > /tmp/verify/a.log 2>&1
nice -n 19 $PY -m hepattr_jax generate top_qcd --n 40 --seed 5 --shard-size 10 --out /tmp/verify/b --quiet > /tmp/verify/b.log 2>&1
# killed run: start, wait for the first finished shard, kill the whole process
nice -n 19 $PY -m hepattr_jax generate top_qcd --n 40 --seed 5 --shard-size 10 --out /tmp/verify/c --quiet > /tmp/verify/c1.log 2>&1 &
PID=$!
while [ ! -f /tmp/verify/c/shard-00000.json ]; do sleep 0.2; done
kill -9 $PID; wait $PID 2>/dev/null
echo "killed after: $(ls /tmp/verify/c | tr '\n' ' ')"
nice -n 19 $PY -m hepattr_jax generate top_qcd --n 40 --seed 5 --shard-size 10 --out /tmp/verify/c --quiet > /tmp/verify/c2.log 2>&1
grep "already done" /tmp/verify/c2.log
for d in a b c; do echo "$d: $(cat /tmp/verify/$d/shard-*.parquet | sha256sum | cut -c1-16)"; (cd /tmp/verify/$d && sha256sum shard-*.parquet | cut -c1-16 | tr '\n' ' '); echo; done
echo "end $(date -u +%T)"
