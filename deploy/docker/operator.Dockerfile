# syntax=docker/dockerfile:1
# ironvirt-operator. Build from the repository root (the whole workspace is the
# build context; .dockerignore keeps target/ and test-bed state out):
#   docker build -f deploy/docker/operator.Dockerfile -t ghcr.io/ironvirt/ironvirt-operator:0.1.0 .
ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG RUST_VERSION
# rust-toolchain.toml asks for "stable": use the image's pinned toolchain
# instead of downloading whatever stable is today.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p ironvirt-operator --bin ironvirt-operator \
 && install -D -m 0755 target/release/ironvirt-operator /out/ironvirt-operator

# glibc and libgcc only (rustls + ring: no OpenSSL); uid 65532, no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ironvirt-operator /usr/local/bin/ironvirt-operator
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/ironvirt-operator"]
