#!/usr/bin/env bash
# list and prune --dry-run over many backups (issue: a few seconds for 10,000), in the local
# S3 server beside the plain `aws s3api list-objects-v2` of the same prefix, and in a local
# directory store. Seeds synthetic backups once per count and store, then times commands.
#   scripts/bench-prune.sh [COUNT=10000]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
scripts/services.sh start
. .dr-services/env
cargo build --release --quiet --bins -p worker -p kubectl-dr
cargo build --release --quiet -p dr-tests --example seed-backups
# Its own bucket: s3s-fs walks a whole bucket on every listing, and 20,000 seeded objects
# in the tests' bucket would slow every test.
bucket=dr-bench
aws --endpoint-url "$AWS_ENDPOINT_URL" s3 mb "s3://$bucket" >/dev/null 2>&1 || true
store="s3://$bucket/bench-prune-$count"
local_store="file://$DR_SERVICES_DIR/bench-prune-$count"
for s in "$store" "$local_store"; do
  if [ -z "$(target/release/kubectl-dr list --store "$s" -o json | head -c 3 | tr -d '[]\n ')" ]; then
    target/release/examples/seed-backups "$s" "$count"
  fi
done
t() { local s=$EPOCHREALTIME; "$@" > /dev/null 2>&1; awk -v s="$s" -v e="$EPOCHREALTIME" -v c="$*" 'BEGIN { printf "%-110s %6.2f s\n", c, e - s }'; }
for s in "$local_store" "$store"; do
  printf '\n%s backups (%s objects), two targets, store %s\n' "$count" "$((2 * count))" "$s"
  if [[ $s == s3://* ]]; then
    t aws --endpoint-url "$AWS_ENDPOINT_URL" s3api list-objects-v2 --bucket "$bucket" --prefix "bench-prune-$count/" --query 'length(Contents)'
  fi
  t target/release/kubectl-dr list --store "$s" -o json
  t target/release/kubectl-dr list --store "$s" --keep-daily 7 --keep-weekly 4 -o json
  t target/release/kubectl-dr prune --store "$s" --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run -o json
  t target/release/worker prune --store "$s" --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run --log-format json
done
