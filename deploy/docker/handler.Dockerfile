# syntax=docker/dockerfile:1
# ironvirt-handler (node agent). Build from the repository root:
#   docker build -f deploy/docker/handler.Dockerfile -t ghcr.io/ironvirt/ironvirt-handler:0.1.0 .
ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG RUST_VERSION
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} CARGO_TERM_COLOR=never
# The virt crate links libvirt (found with pkg-config).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p ironvirt-handler --bin ironvirt-handler \
 && install -D -m 0755 target/release/ironvirt-handler /out/ironvirt-handler

# libvirt's client library (the daemon and QEMU run on the node, not here),
# and the tools the handler runs to prepare per-VMI disks: qemu-img
# (emptyDisk, hostDisk DiskOrCreate), mkfs.vfat and mcopy (cloud-init CIDATA).
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt0 qemu-utils dosfstools mtools genisoimage passt nftables iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ironvirt-handler /usr/local/bin/ironvirt-handler
# Root: libvirtd's socket admits root (see deploy/base/handler/daemonset.yaml
# for what else the pod gets, and does not).
USER 0:0
EXPOSE 8186
ENTRYPOINT ["/usr/local/bin/ironvirt-handler"]
