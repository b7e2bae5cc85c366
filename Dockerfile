# Tarefa's services in one image: tarefa-scheduler, tarefa-executor and the tarefa CLI.
# Build stage: the whole workspace in release mode (no system protoc needed: protox).
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tarefa-scheduler -p tarefa-executor -p tarefa \
 && mkdir /out \
 && cp target/release/tarefa-scheduler target/release/tarefa-executor target/release/tarefa /out/

# Run stage: a small Debian with the three binaries, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
USER 65534:65534
# Containers listen on every interface; the defaults (127.0.0.1) suit a laptop.
ENV TAREFA_LISTEN=0.0.0.0:50051 \
    TAREFA_HTTP_LISTEN=0.0.0.0:8080 \
    TAREFA_LOG_FORMAT=json
EXPOSE 50051 8080
CMD ["tarefa-scheduler"]
