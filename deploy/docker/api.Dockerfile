# syntax=docker/dockerfile:1
# ironvirt-api (aggregated subresources.kubevirt.io API and admission webhooks).
# Build from the repository root:
#   docker build -f deploy/docker/api.Dockerfile -t ghcr.io/ironvirt/ironvirt-api:0.1.0 .
ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG RUST_VERSION
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p ironvirt-apiserver-subresources --bin ironvirt-api \
 && install -D -m 0755 target/release/ironvirt-api /out/ironvirt-api

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ironvirt-api /usr/local/bin/ironvirt-api
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/ironvirt-api"]
