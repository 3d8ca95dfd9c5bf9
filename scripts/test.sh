#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs and starts the real services
# (PostgreSQL 15 and 18, s3s-fs, OpenBao, ClickHouse 18.16 and ClickHouse 26's engine) on loopback,
# builds the binaries the end-to-end tests run and the worker image (podman, offline), then runs
# Kubernetes schema validation of the rendered manifests, formatting, lint, unit and
# integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh start
scripts/validate-manifests.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
# The image the cluster runs, built offline the way scripts/image.sh documents; its tests
# (tests/it/image.rs) run its CronJob containers as the cluster would.
scripts/image.sh
DR_TEST_IMAGE=1 cargo test --workspace --locked "$@"
# The PostgreSQL suite once more against PostgreSQL 18 and its client tools (what the image
# ships and what users run today); the first pass ran it on Debian's 15.
if [ "$#" -eq 0 ]; then
  DR_TEST_PG=18 cargo test -p dr-tests --test it --locked -- postgres:: one_pass:: bad_input:: pitr::
fi
