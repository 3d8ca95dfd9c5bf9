# syntax=docker/dockerfile:1
# The worker image: the `worker` binary (and `kubectl-dr`, which `restore --in-cluster` runs
# as a Job), pg_dump / pg_restore / pg_dumpall / psql / pg_basebackup / pg_receivewal of the
# newest PostgreSQL major (pg_dump refuses servers newer than itself; the last two serve
# point-in-time recovery) and CA certificates, on distroless: no package manager,
# no shell but the /bin/sh pg_dumpall needs (below), UID 65532, fine with a read-only root.
#
# Two ways to build the same image; the build arguments choose where each part comes from:
#
#   online (a registry and the internet):
#     docker build -t ghcr.io/kube-dr/worker:0.1.0 .
#     docker build --build-arg PG_MAJOR=19 …          # when a newer PostgreSQL ships
#     binaries: compiled in rust:${RUST_VERSION}       (BINARIES=build)
#     PostgreSQL tools: apt.postgresql.org             (PGTOOLS=pgdg)
#     runtime base: gcr.io/distroless/cc-debian12      (RUNTIME_IMAGE)
#
#   offline (only Debian's packages and the crate/PyPI registries):
#     scripts/image.sh                                  # tags localhost/kube-dr-worker:dev
#     binaries: target/release, built on the host       (BINARIES=prebuilt, from bin/)
#     PostgreSQL tools: the services' PostgreSQL 18     (PGTOOLS=prebuilt, from pg/;
#       that build's libpq has no TLS: for sslmode=require build online, from PGDG)
#     bases: made by the script from Debian's packages  (DEBIAN_IMAGE, RUNTIME_IMAGE)
#   The script assembles a small build context (bin/, pg/, this file); see it for details.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm
ARG PG_MAJOR=18
ARG BINARIES=build
ARG PGTOOLS=pgdg
ARG DEBIAN_IMAGE=debian:bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- the binaries: compiled here (online) ---
FROM rust:${RUST_VERSION}-${DEBIAN} AS binaries-build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p worker -p kubectl-dr \
 && install -D -m 0755 target/release/worker /out/worker \
 && install -D -m 0755 target/release/kubectl-dr /out/kubectl-dr

# --- the binaries: built on the host (offline; scripts/image.sh puts them in bin/) ---
FROM ${DEBIAN_IMAGE} AS binaries-prebuilt
COPY bin/worker bin/kubectl-dr /out/

# A stage of this file, chosen by the build argument (not an image to tag).
# hadolint ignore=DL3006
FROM binaries-${BINARIES} AS binaries

# --- the PostgreSQL client tools from the PostgreSQL project's own Debian repository, with
# the shared libraries they need (except glibc, which the runtime base provides) ---
FROM ${DEBIAN_IMAGE} AS pgtools-pgdg
ARG DEBIAN
ARG PG_MAJOR
# A failing ldd or cp inside a pipe must fail the build, not ship an image missing a library.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Unpinned on purpose: PG_MAJOR pins the major; within it the newest client is what we want.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && install -d /usr/share/postgresql-common/pgdg \
 && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
      https://www.postgresql.org/media/keys/ACCC4CF8.asc \
 && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${DEBIAN}-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" \
 && mkdir -p /out/bin /out/root \
 && for tool in pg_dump pg_restore pg_dumpall psql pg_basebackup pg_receivewal; do \
      cp "/usr/lib/postgresql/${PG_MAJOR}/bin/${tool}" /out/bin/; \
    done \
 && ldd /out/bin/* | awk '/=> \// { print $3 }' | sort -u \
      | grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' \
      | xargs -r cp --parents -L -t /out/root \
 && /out/bin/pg_dump --version

# --- the PostgreSQL client tools the host has (offline; scripts/image.sh puts them in pg/:
# pg/bin the tools, pg/root the libraries they need, at their paths) ---
FROM ${DEBIAN_IMAGE} AS pgtools-prebuilt
COPY pg/ /out/

# A stage of this file, chosen by the build argument (not an image to tag).
# hadolint ignore=DL3006
FROM pgtools-${PGTOOLS} AS pgtools

FROM ${RUNTIME_IMAGE}
COPY --from=pgtools /out/root/ /
COPY --from=pgtools /out/bin/ /usr/local/bin/
# The one shell of the image, and only because pg_dumpall needs one: it checks its pg_dump
# with popen("pg_dump -V"), which runs /bin/sh; without it `worker backup postgres
# --globals` fails ("pg_dump is needed by pg_dumpall but was not found"). dash needs only
# glibc. Found by running the image as the CronJob does (tests/it/image.rs).
COPY --from=pgtools /usr/bin/dash /bin/sh
COPY --from=binaries /out/worker /out/kubectl-dr /usr/local/bin/
ENV DR_PG_BIN_DIR=/usr/local/bin \
    DR_LOG_FORMAT=json
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/worker"]
