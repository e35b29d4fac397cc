#!/usr/bin/env bash
# Builds the small guest kernel and caches it: Debian's linux-source package,
# Linux's tinyconfig plus hack/guest/small-kernel.config (virtio, SATA/SCSI,
# serial and VT consoles, ACPI, EFI stub, vfat/iso9660, IPv4), every driver
# built in. Its decompressor needs 16M instead of the cloud kernel's 51M, so
# the guest boots in the 64M that KubeVirt's cirros examples give; the cloud
# kernel needs 80M. It is not signed: Secure Boot guests use the cloud kernel.
# About 5 minutes on 2 cores, once per source version and configuration.
# Prints the path of the bzImage on stdout.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"

SRC_PKG="${IRONVIRT_SMALL_KERNEL_SOURCE:-linux-source-6.1}"
for tool in make gcc flex bison bc dpkg-deb xz; do
  command -v "$tool" >/dev/null || die "$tool is missing (needed to build the small guest kernel); run 'make deps' (hack/install-deps.sh) first."
done
[[ -f /usr/include/gelf.h ]] || die "libelf-dev is missing (needed to build the small guest kernel); run 'make deps' first."

mkdir -p "$IRONVIRT_CACHE/guest"
exec 8>"$IRONVIRT_CACHE/guest/.small-kernel.lock"
flock 8

# The version apt would fetch, so a security update rebuilds once.
srcver="$(apt-cache policy "$SRC_PKG" 2>/dev/null | sed -n 's/^ *Candidate: //p')"
if [[ -z "$srcver" || "$srcver" == "(none)" ]]; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
  srcver="$(apt-cache policy "$SRC_PKG" 2>/dev/null | sed -n 's/^ *Candidate: //p')"
fi
[[ -n "$srcver" && "$srcver" != "(none)" ]] || die "Debian has no package $SRC_PKG here; run 'apt-get update' and check that Debian's mirror is reachable."

key="$(cat "$HACK/build-small-kernel.sh" "$HACK/guest/small-kernel.config" | sha256sum | cut -c1-12)"
out="$IRONVIRT_CACHE/guest/small-kernel-$srcver-$key"
if [[ -f "$out/bzImage" ]]; then
  touch "$out"
  echo "$out/bzImage"
  exit 0
fi

log "building the small guest kernel ($SRC_PKG $srcver) into $out (about 5 minutes)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$SRC_PKG=$srcver" >/dev/null 2>&1) \
  || die "apt-get download $SRC_PKG=$srcver failed; check that Debian's package mirror is reachable."
dpkg-deb --fsys-tarfile "$work/${SRC_PKG}_"*.deb | tar -x -C "$work" --wildcards '*.tar.xz'
tar -xJf "$work/usr/src/$SRC_PKG.tar.xz" -C "$work"
src="$work/$SRC_PKG"
[[ -d "$src" ]] || die "the package $SRC_PKG has no /usr/src/$SRC_PKG.tar.xz with $SRC_PKG/ in it"
make -s -C "$src" tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$HACK/guest/small-kernel.config" >/dev/null
make -s -C "$src" olddefconfig >/dev/null 2>&1
# Every option asked for must have survived olddefconfig (a missing dependency drops it silently).
missing=()
while IFS= read -r opt; do
  grep -qx "$opt" "$src/.config" || missing+=("$opt")
done < <(grep -E '^CONFIG_[A-Z0-9_]+=y$' "$HACK/guest/small-kernel.config")
((${#missing[@]} == 0)) || die "the small kernel's configuration lost ${missing[*]} (a dependency is missing from hack/guest/small-kernel.config)"
make -s -C "$src" -j"$(nproc)" bzImage >"$work/build.log" 2>&1 || {
  tail -30 "$work/build.log" >&2
  die "building the small guest kernel failed; the end of the build log is above."
}
mkdir -p "$out.tmp"
cp "$src/arch/x86/boot/bzImage" "$src/.config" "$out.tmp/"
rm -rf "$out" && mv "$out.tmp" "$out"
# Builds unused for a week are dropped.
find "$IRONVIRT_CACHE/guest" -mindepth 1 -maxdepth 1 -type d -name "small-kernel-*" ! -name "*.tmp" \
  ! -path "$out" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
echo "$out/bzImage"
