# Tollgate: multi-stage build. The runtime image holds the binary, CA roots
# and nothing else; it runs as an unprivileged user.
#
#   docker build -t tollgate .
#   docker run -p 8080:8080 -p 9901:9901 -v $PWD/my.yaml:/etc/tollgate/tollgate.yaml tollgate
#
# The mounted config must listen on 0.0.0.0. To reach the admin API from
# outside the container (metrics, reload), put it on 0.0.0.0:9901 with a
# token (server.admin.token: "${TOLLGATE_ADMIN_TOKEN}"); without one the
# gateway refuses a public admin listener. The health check runs inside
# the container, on 127.0.0.1.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY vendor ./vendor
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin tollgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tollgate \
 && mkdir -p /etc/tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
# The default config and every file it names (tests/it/binary.rs checks
# that the config starts from these files alone).
COPY config/tollgate.yaml config/jwks.example.json /etc/tollgate/
USER tollgate
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9901/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["run", "-c", "/etc/tollgate/tollgate.yaml", "--log-format", "json"]
