# Tollgate: multi-stage build. The runtime image holds the binary, CA roots
# and the default config, nothing else; it runs as an unprivileged user.
#
#   docker build -t tollgate .
#   docker run -p 8080:8080 -v $PWD/my.yaml:/etc/tollgate/tollgate.yaml tollgate
#
# The mounted config must listen on 0.0.0.0. To reach the admin API from
# outside the container (metrics, reload), put it on 0.0.0.0:9901 with a
# token (server.admin.token: "${TOLLGATE_ADMIN_TOKEN}"); without one the
# gateway refuses a public admin listener. The health check runs inside
# the container (`tollgate healthcheck`, no curl needed).

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when the
# manifests change, not on every source change. Stub sources stand in for
# the crate's own targets.
COPY Cargo.toml Cargo.lock build.rs ./
COPY vendor ./vendor
RUN mkdir -p src benches examples \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && for b in routing ratelimit cache; do echo 'fn main() {}' > "benches/$b.rs"; done \
 && echo 'fn main() {}' > examples/demo.rs \
 && cargo build --profile dist --locked --bin tollgate \
 && rm -rf src benches examples
COPY src ./src
COPY benches ./benches
COPY examples ./examples
# Newer than the stubs' build, whatever times the copy kept.
RUN touch src/main.rs src/lib.rs \
 && cargo build --profile dist --locked --bin tollgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tollgate \
 && mkdir -p /etc/tollgate
COPY --from=build /src/target/dist/tollgate /usr/local/bin/tollgate
# The default config and every file it names (tests/it/binary.rs checks
# that the config starts from these files alone).
COPY config/tollgate.yaml config/jwks.example.json config/partners.keys.yaml config/tollgate.schema.json /etc/tollgate/
USER tollgate
EXPOSE 8080 9901
# Asks /readyz on the config's admin listener.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/tollgate", "healthcheck", "-c", "/etc/tollgate/tollgate.yaml"]
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["run", "-c", "/etc/tollgate/tollgate.yaml", "--log-format", "json"]
