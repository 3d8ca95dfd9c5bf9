#!/usr/bin/env bash
# Kubernetes objects benchmark (issue 31): 10,000 ConfigMaps backed up from a scripted API
# server and restored into another (no real API server runs here), with wall time and
# requests per object. The scripted servers answer each request on a new connection, so the
# times are an upper bound of what the worker itself costs; the request counts are exact.
#
#   scripts/bench-kubernetes.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/services.sh start >/dev/null
cargo build --release --bins --quiet
cargo test --release --quiet -p dr-tests --test it -- --ignored --exact \
  kubernetes::ten_thousand_objects_in_pages_benchmark --nocapture 2>/dev/null |
  sed -n '/^Kubernetes objects/,/^restore/p'
