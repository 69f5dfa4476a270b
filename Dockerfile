# Multi-stage build of the invoq binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --package invoq

FROM debian:bookworm-slim
# curl: shell bootstraps speak the Runtime API with it. python3 and nodejs: the managed
# runtimes (python3.11 and nodejs18.x on bookworm), whose official runtime interface clients
# are installed below, once, with pip and npm; npm builds the Node.js client's addon with
# the build tools, removed again afterwards.
ENV INVOQ_RUNTIMES_DIR=/opt/invoq/runtimes
COPY --from=build /src/target/release/invoq /usr/local/bin/invoq
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl python3 python3-pip \
        nodejs npm \
    && apt-get install -y --no-install-recommends cmake autoconf automake libtool make g++ \
        libnode-dev \
    && invoq runtimes install --all \
    && apt-get purge -y cmake autoconf automake libtool make g++ libnode-dev \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* /root/.npm /root/.cache \
    && useradd --system --uid 10001 --home-dir /var/lib/invoq --create-home invoq
# Listening on every interface of the container: SigV4 authentication is then on, so the
# API needs INVOQ_ACCESS_KEYS (and gRPC services INVOQ_GRPC_TOKEN) to start.
ENV INVOQ_HTTP_ADDR=0.0.0.0:9001 INVOQ_DATA_DIR=/var/lib/invoq
# Unprivileged by default. Function sandboxes need root and CAP_SYS_ADMIN for their
# namespaces: docker-compose.yml grants those to the runtime container only.
USER invoq
EXPOSE 9001
ENTRYPOINT ["invoq"]
CMD ["serve"]
