# syntax=docker/dockerfile:1
# The worker image: the `worker` binary (and `kubectl-dr`, which `restore --in-cluster` runs
# as a Job), pg_dump / pg_restore / pg_dumpall of the newest
# PostgreSQL major (pg_dump refuses servers newer than itself) and CA certificates, on
# distroless: no shell, no package manager, UID 65532, fine with a read-only root.
#
#   docker build -t ghcr.io/kube-dr/worker:0.1.0 .
#   docker build --build-arg PG_MAJOR=19 …        # when a newer PostgreSQL ships

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm
ARG PG_MAJOR=18

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p worker -p kubectl-dr \
 && install -D -m 0755 target/release/worker /out/worker \
 && install -D -m 0755 target/release/kubectl-dr /out/kubectl-dr

# The PostgreSQL client tools from the PostgreSQL project's own Debian repository, with the
# shared libraries they need (except glibc, which the distroless base provides).
FROM debian:${DEBIAN}-slim AS pgtools
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
 && for tool in pg_dump pg_restore pg_dumpall; do \
      cp "/usr/lib/postgresql/${PG_MAJOR}/bin/${tool}" /out/bin/; \
    done \
 && ldd /out/bin/* | awk '/=> \// { print $3 }' | sort -u \
      | grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' \
      | xargs -r cp --parents -L -t /out/root \
 && /out/bin/pg_dump --version

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=pgtools /out/root/ /
COPY --from=pgtools /out/bin/ /usr/local/bin/
COPY --from=build /out/worker /out/kubectl-dr /usr/local/bin/
ENV DR_PG_BIN_DIR=/usr/local/bin \
    DR_LOG_FORMAT=json
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/worker"]
