#!/usr/bin/env bash
# list and prune --dry-run over many backups in the local S3 server (issue: a few seconds
# for 10,000). Seeds synthetic backups once per count, then times the commands.
#   scripts/bench-prune.sh [COUNT=10000]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
scripts/services.sh start
. .dr-services/env
cargo build --release --quiet --bins -p worker -p kubectl-dr
cargo build --release --quiet -p dr-tests --example seed-backups
store="s3://$DR_TEST_BUCKET/bench-prune-$count"
if [ -z "$(target/release/kubectl-dr list --store "$store" -o json | head -c 3 | tr -d '[]\n ')" ]; then
  target/release/examples/seed-backups "$store" "$count"
fi
t() { local s=$EPOCHREALTIME; "$@" > /dev/null; awk -v s="$s" -v e="$EPOCHREALTIME" -v c="$*" 'BEGIN { printf "%-110s %6.2f s\n", c, e - s }'; }
printf '\n%s backups, two targets, in s3s-fs on loopback\n' "$count"
t target/release/kubectl-dr list --store "$store" -o json
t target/release/kubectl-dr list --store "$store" --keep-daily 7 --keep-weekly 4 -o json
t target/release/kubectl-dr prune --store "$store" --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run -o json
t target/release/worker prune --store "$store" --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run --log-format json
