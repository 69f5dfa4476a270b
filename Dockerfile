# Multi-stage build of the invoq binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --package invoq

FROM debian:bookworm-slim
# curl: shell bootstraps speak the Runtime API with it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/invoq /usr/local/bin/invoq
ENV INVOQ_HTTP_ADDR=0.0.0.0:9001 INVOQ_DATA_DIR=/var/lib/invoq
EXPOSE 9001
ENTRYPOINT ["invoq"]
CMD ["serve"]
