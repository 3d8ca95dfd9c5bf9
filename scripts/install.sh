#!/usr/bin/env bash
# Installs `worker` and `kubectl-dr` (the `kubectl dr` plugin) into a directory on the PATH.
#
#   scripts/install.sh                       # release build, into ~/.local/bin
#   scripts/install.sh --prefix /usr/local/bin
#   scripts/install.sh --bin-dir target/debug --prefix DIR   # install binaries already built
#
# kubectl finds plugins by name on the PATH: with kubectl-dr there, `kubectl dr …` works.
# The alternative without this script: `cargo install --locked --path kubectl-dr` (and
# `--path worker`), which installs into ~/.cargo/bin.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${PREFIX:-$HOME/.local/bin}
bin_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$bin_dir" ]; then
  echo "install: building release binaries (cargo build --release: about 15 minutes the first time on 2 cores)" >&2
  cargo build --release --locked --bins --quiet
  bin_dir=target/release
fi
for b in worker kubectl-dr; do
  [ -x "$bin_dir/$b" ] || { echo "install: $bin_dir/$b not found; build first or leave out --bin-dir" >&2; exit 2; }
done

mkdir -p "$prefix"
for b in worker kubectl-dr; do
  install -m 0755 "$bin_dir/$b" "$prefix/$b"
  echo "install: $prefix/$b ($("$prefix/$b" --version))" >&2
done

case ":$PATH:" in
  *":$prefix:"*) ;;
  *) echo "install: $prefix is not on your PATH; add it: export PATH=\"$prefix:\$PATH\"" >&2 ;;
esac
if command -v kubectl >/dev/null; then
  if PATH="$prefix:$PATH" kubectl dr --version >/dev/null 2>&1; then
    echo "install: kubectl finds the plugin: kubectl dr --help" >&2
  else
    echo "install: kubectl does not run the plugin; check that $prefix is on the PATH kubectl sees" >&2
    exit 1
  fi
else
  echo "install: kubectl not found; run the plugin as kubectl-dr, or install kubectl (https://kubernetes.io/docs/tasks/tools/) and use kubectl dr" >&2
fi
