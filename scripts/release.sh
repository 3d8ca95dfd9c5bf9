#!/usr/bin/env bash
# Builds the kubectl-dr plugin's release archive for this machine's platform and writes the
# krew manifest for it, with the archive's real sha256:
#
#   scripts/release.sh                         # dist/kubectl-dr-<os>-<arch>.tar.gz, dist/dr.yaml
#   scripts/release.sh --base-url https://github.com/ORG/kube-dr/releases/download/v0.1.0
#   scripts/release.sh --bin-dir target/debug --out DIR   # package binaries already built
#
# Install from it without any download (krew checks the sha256 against the archive):
#   kubectl krew install --manifest=dist/dr.yaml --archive=dist/kubectl-dr-linux-amd64.tar.gz
#
# Each archive holds `kubectl-dr` and LICENSE. Other platforms need their own toolchain: run
# the script there and merge the `platforms` entries into one manifest.
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist
bin_dir=""
base_url=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --base-url) base_url=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "release: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$bin_dir" ]; then
  cargo build --release --locked --bin kubectl-dr --quiet
  bin_dir=target/release
fi
plugin=$bin_dir/kubectl-dr
[ -x "$plugin" ] || { echo "release: $plugin not found" >&2; exit 2; }

version=v$("$plugin" --version | awk '{print $2}')
os=$(uname -s | tr '[:upper:]' '[:lower:]')
case "$(uname -m)" in
  x86_64|amd64) arch=amd64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) echo "release: unsupported architecture $(uname -m)" >&2; exit 2 ;;
esac
base_url=${base_url:-https://github.com/kube-dr/kube-dr/releases/download/$version}
name=kubectl-dr-$os-$arch.tar.gz

mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$plugin" "$stage/kubectl-dr"
cp LICENSE "$stage/LICENSE"
# Reproducible: fixed owner, order and times, so the same binary gives the same sha256.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -cf - kubectl-dr LICENSE \
  | gzip -n -9 > "$out/$name"
sha=$(sha256sum "$out/$name" | awk '{print $1}')

# The descriptions come from the plugin's own help, so they name what this build supports.
short=$("$plugin" --help | head -n1 | sed 's/ (.*//; s/\.$//')
description=$("$plugin" --help | awk 'NR>1 && /^$/ {exit} {print "    " $0}')
cat > "$out/dr.yaml" <<YAML
# krew plugin manifest written by scripts/release.sh for $name.
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: dr
spec:
  version: $version
  homepage: https://github.com/kube-dr/kube-dr
  shortDescription: "$short"
  description: |
$description
    Works from flags and the environment alone, so it still works after the cluster (and
    its Secrets) are gone.
  platforms:
    - selector:
        matchLabels: { os: $os, arch: $arch }
      uri: $base_url/$name
      sha256: "$sha"
      bin: kubectl-dr
      files:
        - { from: kubectl-dr, to: . }
        - { from: LICENSE, to: . }
YAML
echo "release: $out/$name (sha256 $sha) and $out/dr.yaml" >&2
