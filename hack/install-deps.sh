#!/usr/bin/env bash
# Installs the Debian packages the test bed needs (libvirt, QEMU, guest tools), once.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"

PKGS=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  qemu-system-x86 qemu-utils busybox-static cpio
  syslinux syslinux-common mtools dosfstools genisoimage
  tmux curl ca-certificates openssl xz-utils zstd procps gcc libc6-dev
  passt nftables iproute2
  ovmf swtpm swtpm-tools
  make flex bison bc libelf-dev
  openssh-client
  libxml2-utils
  docker-registry
  chromium fonts-dejavu-core
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || die "the test bed needs Debian packages (${missing[*]}); run 'make deps' as root, or install them with apt-get."
  command -v apt-get >/dev/null || die "apt-get not found: the test bed needs a Debian-based machine to install ${missing[*]}."
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed; check that Debian's package mirror is reachable."
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed; see the output above."
fi

# Go builds the control plane; Rust (edition 2024) builds ironvirt.
check_toolchains

# libvirt without systemd: QEMU runs as root with no security driver (the test bed
# is a single trusted machine), and the runtime directories exist.
QEMU_CONF=/etc/libvirt/qemu.conf
if [[ $(id -u) -eq 0 ]] && ! grep -q '^# ironvirt test bed' "$QEMU_CONF" 2>/dev/null; then
  log "configuring $QEMU_CONF for the test bed (user=root, security_driver=none)"
  mkdir -p /etc/libvirt
  touch "$QEMU_CONF"
  sed -i -E '/^[[:space:]]*(user|group|security_driver)[[:space:]]*=/d' "$QEMU_CONF"
  cat >>"$QEMU_CONF" <<'CONF'
# ironvirt test bed: QEMU as root without a security driver (no systemd, no AppArmor here)
user = "root"
group = "root"
security_driver = "none"
CONF
fi
if [[ $(id -u) -eq 0 ]]; then
  mkdir -p /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt/images
  getent group kvm >/dev/null || groupadd --system kvm
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home --gid kvm --shell /usr/sbin/nologin libvirt-qemu
fi
