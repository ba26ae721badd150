# The driftless gateway image: the `driftless` binary alone, on a slim runtime, as a non-root user.
# Build:  docker build -t driftless:0.1.0 .    (or any OCI builder)
# crates/driftless-cli/tests/image.rs builds the runtime stage (with a stand-in base and the
# binary built outside) and runs it as the chart does. Keep it conventional.

ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# --locked: exactly the dependency versions in Cargo.lock.
RUN cargo build --release --locked --package driftless \
    && install -D -m 0755 target/release/driftless /out/driftless

FROM debian:bookworm-slim
# CA certificates: the providers' HTTPS endpoints are verified against the system's bundle.
# A fixed numeric uid/gid (the chart's runAsUser/runAsGroup/fsGroup default): Kubernetes can
# only enforce runAsNonRoot on a numeric USER.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 driftless \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin driftless
COPY --from=build /out/driftless /usr/local/bin/driftless
USER 10001:10001
# The chart mounts the config here (a ConfigMap) and the state dir (emptyDir or a PVC).
ENV DRIFTLESS_CONFIG=/etc/driftless/config.toml \
    DRIFTLESS_STATE_DIR=/var/lib/driftless
EXPOSE 18789
ENTRYPOINT ["/usr/local/bin/driftless"]
CMD ["gateway", "run"]
