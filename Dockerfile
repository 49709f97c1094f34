# syntax=docker/dockerfile:1
#
# Relay's container image: `relay` (serve), `relay migrate`, `relay token`,
# `relay healthcheck`. Built from the repository root:
#
#   docker build -t relay:dev .
#
# Adapted from the deployment document's Dockerfile; every change is marked
# "FIX:" with the reason. infra/README.md is the runbook.
#
# Dependency caching. The seed cached dependencies with a dummy
# `src/main.rs`, which fits a single-package crate; Relay is a workspace.
# Chosen here: the same idea, adapted - copy the workspace manifest, the
# lockfile and every member's Cargo.toml, give each member an empty target,
# build (that compiles every third-party crate into a layer of its own), then
# copy the real sources and build again. Only the five small Relay crates are
# compiled in the second step, and the dependency layer stays valid until a
# Cargo.toml or Cargo.lock changes. It works with any builder, and the layer
# can be exported to a registry cache (`--cache-to`) for CI machines that do
# not keep a local cache - which BuildKit cache mounts (the other option:
# `cargo fetch` plus `--mount=type=cache` on the registry and target/) cannot.

# ---------------------------------------------------------------------------
# Stage 1: third-party dependencies, compiled once per Cargo.lock.
# FIX: rust:1.78-slim-bookworm -> rust:1.95-bookworm. The workspace is
# edition 2024 with rust-version 1.95 (1.78 cannot read its manifests), and
# the full image brings gcc and make, which is all the build needs
# (tikv-jemalloc-sys builds jemalloc with them; aws-lc-sys and ring build
# with the cc crate).
FROM rust:1.95-bookworm AS deps

# FIX: the seed installed pkg-config and libssl-dev. Relay links no OpenSSL
# (TLS is rustls; aws-lc/ring are compiled from the vendored sources) and no
# libpq (diesel-async speaks the protocol itself), so nothing is installed.

WORKDIR /app

# FIX: the seed copied Cargo.toml and built a root `src/main.rs`; the root
# manifest here is a virtual workspace, and cargo needs every member's
# manifest (and a target for each) before it builds anything. `fuzz/` is
# excluded from the workspace and not needed.
COPY Cargo.toml Cargo.lock ./
COPY domain/Cargo.toml domain/
COPY ports/Cargo.toml ports/
COPY adapters/memory/Cargo.toml adapters/memory/
COPY adapters/jwt/Cargo.toml adapters/jwt/
COPY adapters/postgres/Cargo.toml adapters/postgres/
COPY adapters/redis/Cargo.toml adapters/redis/
COPY adapters/ws/Cargo.toml adapters/ws/
COPY adapters/otel/Cargo.toml adapters/otel/
COPY app/Cargo.toml app/
COPY tests/Cargo.toml tests/
COPY tests/load/Cargo.toml tests/load/

# Empty targets: a library for each member, the `relay` binary, and the
# domain's explicitly declared `traces` bench (cargo refuses a manifest whose
# declared target file is missing, even when that package is not built).
# `migrations/` is there (empty) because the adapters embed it.
# FIX: `--locked` (the seed had none): the image builds exactly Cargo.lock and
# fails instead of resolving anew. `-p relay-app --bin relay`: only the
# server is built, not the test and benchmark binaries.
# The stubs' own build products are then deleted (fingerprints included), so
# the next stage recompiles every Relay crate whatever the copied files'
# modification times are: COPY keeps the times from the build context, which
# are usually older than this layer, and cargo would otherwise take the empty
# stubs as up to date and ship an empty `main`.
RUN set -eux; \
    for member in domain ports adapters/memory adapters/jwt adapters/postgres \
                  adapters/redis adapters/ws adapters/otel app tests tests/load; do \
        mkdir -p "$member/src"; \
        : > "$member/src/lib.rs"; \
    done; \
    echo 'fn main() {}' > app/src/main.rs; \
    echo 'fn main() {}' > tests/load/src/main.rs; \
    mkdir -p domain/benches migrations; \
    echo 'fn main() {}' > domain/benches/traces.rs; \
    cargo build --release --locked -p relay-app --bin relay; \
    rm -rf target/release/.fingerprint/relay-* \
           target/release/build/relay-* \
           target/release/deps/librelay_* \
           target/release/deps/relay-* \
           target/release/deps/relay_* \
           target/release/relay

# ---------------------------------------------------------------------------
# Stage 2: Relay itself.
FROM deps AS builder

# FIX: the seed copied `src/` (there is none at the root). What the build
# reads: each crate's src/, the PostgreSQL adapter's build script, and
# `migrations/`, which `embed_migrations!("../../migrations")` in adapters/postgres compiles
# into the binary. The tests crates (tests/, tests/load/) keep their stubs:
# they are not part of `relay`.
# (The include_str! fixtures under adapters/jwt/tests are used by unit tests
# only, never by a release build.)
COPY domain/src domain/src
COPY ports/src ports/src
COPY adapters/postgres/build.rs adapters/postgres/build.rs
COPY adapters/memory/src adapters/memory/src
COPY adapters/jwt/src adapters/jwt/src
COPY adapters/postgres/src adapters/postgres/src
COPY adapters/redis/src adapters/redis/src
COPY adapters/ws/src adapters/ws/src
COPY adapters/otel/src adapters/otel/src
COPY app/src app/src
COPY migrations migrations

# FIX: the seed's `touch src/main.rs` is replaced by deleting the stubs'
# fingerprints in stage 1 (see there); `--locked` and the one binary as there.
# The last line fails the build if the empty stub `main` was shipped after all.
RUN cargo build --release --locked -p relay-app --bin relay \
    && ./target/release/relay --help > /tmp/relay-help \
    && grep -q migrate /tmp/relay-help

# ---------------------------------------------------------------------------
# Stage 3: runtime.
FROM debian:bookworm-slim AS runtime

# FIX: only ca-certificates (rustls verifies the JWKS issuer's and any TLS
# database's certificate against the system store). The seed's libssl3 is
# not linked, and curl is gone: the health check is `relay healthcheck`.
# FIX: the user is created with UID/GID 1000 explicitly. The seed's
# `useradd -r` picked some system UID, which did not match the Kubernetes
# securityContext's runAsUser 1000 (files the image prepared for its user
# would not be writable) - and USER below is numeric for the same reason.
# /keys: only for docker-compose's `devkeys` service, whose named volume is
# mounted there; Docker gives a new volume the ownership of the image's
# directory, so the development key can be written by UID 1000.
# Package versions are not pinned (DL3008): the image takes Debian's
# current security updates when it is rebuilt, and a pinned version
# disappears from the archive when Debian supersedes it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 relay \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin relay \
    && install -d -o 1000 -g 1000 -m 0700 /keys

COPY --from=builder /app/target/release/relay /usr/local/bin/relay

# FIX: the seed copied migrations/ into the image; they are embedded in the
# binary (`relay migrate`), so nothing else is needed at run time.

# Environment defaults.
# FIX: TOKIO_WORKER_THREADS=4 is not baked in: unset, Relay uses as many
# workers as the CPUs it may use, and Rust reads the container's CPU quota
# for that - 4 fixed workers under a 2-CPU limit are throttled. Kubernetes
# sets it from the CPU limit (infra/k8s/base/deployment.yaml).
# RELAY_DEV_KEY_FILE: development mode (no JWT_PUBLIC_KEY_URL) writes its key
# here; /tmp is the one writable path with a read-only root filesystem.
ENV RUST_LOG=info \
    RUST_BACKTRACE=1 \
    RELAY_DEV_KEY_FILE=/tmp/relay-dev-key.pem

# Security: non-root (numeric, so Kubernetes' runAsNonRoot can verify it).
USER 1000:1000

# FIX: 9090 (METRICS_PORT, /metrics) is exposed too, not only 8081.
EXPOSE 8081 9090

# FIX: `relay healthcheck` (GET /health, exit 0 on 200) instead of curl,
# which the runtime image does not have. It checks 127.0.0.1:8081, the
# default BIND_ADDRESS; override HEALTHCHECK if you move the port.
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
    CMD ["relay", "healthcheck", "--url", "http://127.0.0.1:8081"]

# Relay is PID 1: it handles SIGTERM (graceful drain) and SIGINT itself and
# starts no child processes, so no init is needed. `docker run IMAGE migrate`
# or `... token ...` replace CMD.
ENTRYPOINT ["relay"]
CMD ["serve"]
