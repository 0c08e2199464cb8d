# warren's container image: the glibc binary on distroless/cc (glibc and
# libgcc, no shell, no package manager), running as a non-root user, with a
# health check that asks warren itself.
#
# Not a static musl binary: musl's allocator made warren-bench's 64 KiB
# publishes cost 88.6 µs of warren CPU per message against glibc's 22.1
# (0.36x of direct against 0.59x), and memory.rs tunes glibc's allocator.
#
#   scripts/image.sh                 # docker or podman build, tag warren:VERSION
#   docker run -e AMQP_URL=amqp://rabbitmq:5672 -p 5673:5673 warren:0.1.0
#
# Configuration: packaging/container/warren.toml (a broker named rabbitmq,
# AMQP on 0.0.0.0:5673, HTTP on loopback), a file mounted over it, or the
# environment (AMQP_URL, LISTEN_PORT, ...; every option has a variable,
# docs/configuration.md), which beats the file.

# Debian 12 on both sides: the binary needs glibc 2.34, the runtime has 2.36.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The build context leaves .git out (.dockerignore): the commit comes in
# as an argument (scripts/image.sh passes it).
ARG WARREN_COMMIT=unknown
ARG SOURCE_DATE_EPOCH
RUN cargo build --release --locked --bin warren \
    && strip target/release/warren \
    && target/release/warren --version

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/warren /usr/bin/warren
COPY packaging/container/warren.toml /etc/warren/warren.toml
EXPOSE 5673 5674
# distroless's "nonroot" user (65532), by number so that Kubernetes'
# runAsNonRoot can check it.
USER 65532:65532
# `warren ctl ready` asks /readyz (a broker node answers, not draining).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/bin/warren", "ctl", "--timeout", "4", "ready"]
# SIGTERM drains (term_timeout); give `docker stop -t` more than it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/warren"]
CMD ["--config", "/etc/warren/warren.toml"]
