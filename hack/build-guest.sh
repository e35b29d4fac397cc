#!/usr/bin/env bash
# Builds the test guest from Debian packages and caches it:
#   vmlinuz          a Debian cloud kernel (dpkg -x of linux-image-*-cloud-amd64)
#   initramfs.cpio.gz a busybox initramfs whose init prints the marker line to ttyS0,
#                    runs a shell on the serial console and powers off on ACPI shutdown;
#                    with an SSH server (Debian's dropbear) taking its authorized keys
#                    from cloud-init's ssh_authorized_keys
#   disk.qcow2       a bootable disk of the same guest: a FAT superfloppy (no partition
#                    table) that boots under SeaBIOS (syslinux) and under UEFI/OVMF, with
#                    or without Secure Boot (Debian's signed shim -> signed GRUB -> signed
#                    kernel; shim is signed by Microsoft's UEFI CA, which OVMF_VARS*.ms.fd enrol)
#   vmlinuz-small    the small kernel (hack/build-small-kernel.sh): boots in 64M, unsigned
#   disk-small.qcow2 the same disk with the small kernel: served under the cirros names,
#                    as KubeVirt's cirros examples give their guests 64M
# Prints the guest directory on stdout.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"

for tool in dpkg-deb cpio mcopy mmd mkfs.vfat syslinux qemu-img apt-get xz flock; do
  command -v "$tool" >/dev/null || die "$tool is missing; run 'make deps' (hack/install-deps.sh) first."
done
[[ -x /bin/busybox ]] || die "busybox-static is missing; run 'make deps' first."

mkdir -p "$IRONVIRT_CACHE/guest"
exec 9>"$IRONVIRT_CACHE/guest/.lock"
flock 9

# The kernel package behind the cloud meta-package, e.g. linux-image-6.1.0-41-cloud-amd64.
resolve_kernel() {
  { apt-cache depends "$GUEST_KERNEL_PKG" 2>/dev/null || true; } \
    | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1
}
kpkg="$(resolve_kernel)"
if [[ -z "$kpkg" ]]; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
  kpkg="$(resolve_kernel)"
fi
[[ -n "$kpkg" ]] || die "cannot resolve $GUEST_KERNEL_PKG to a kernel package; run 'apt-get update' and check that Debian's mirror is reachable."

# The small kernel (cached on its own: a change to the initramfs does not rebuild it).
small="$("$HACK/build-small-kernel.sh")" || die "the small guest kernel did not build (see above)"

key="$({ cat "$HACK/build-guest.sh" "$HACK/guest/init" "$HACK/guest/udhcpc-script" "$HACK/guest/pagesrv.c" /bin/busybox; echo "$small"; } | sha256sum | cut -c1-12)"
out="$IRONVIRT_CACHE/guest/$kpkg-$key"
if [[ -f "$out/disk.qcow2" && -f "$out/disk-small.qcow2" && -f "$out/vmlinuz" && -f "$out/initramfs.cpio.gz" ]]; then
  touch "$out"
  echo "$out"
  exit 0
fi

log "building the test guest ($kpkg) into $out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
debdir="$IRONVIRT_CACHE/guest/debs"
deb="$debdir/$kpkg.deb"
mkdir -p "$debdir"
if ! dpkg-deb --info "$deb" >/dev/null 2>&1; then
  mkdir -p "$work/dl"
  if ! (cd "$work/dl" && apt-get download "$kpkg" >/dev/null 2>&1); then
    # Stale package lists name a kernel the mirror no longer has: refresh once.
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
    kpkg="$(resolve_kernel)"
    deb="$debdir/$kpkg.deb"
    out="$IRONVIRT_CACHE/guest/$kpkg-$key"
    (cd "$work/dl" && apt-get download "$kpkg" >/dev/null) \
      || die "apt-get download $kpkg failed; check that Debian's package mirror is reachable."
  fi
  mv "$work/dl/${kpkg}_"*.deb "$deb"
fi
dpkg-deb -x "$deb" "$work/kernel"
kver="${kpkg#linux-image-}"
vmlinuz="$work/kernel/boot/vmlinuz-$kver"
[[ -f "$vmlinuz" ]] || die "the kernel package $kpkg has no /boot/vmlinuz-$kver"

# unpack_debs DEST WHAT PKG...: unpacks (dpkg -x, never installs) each
# package into DEST, downloading it into the cache once; WHAT names it in
# the error.
unpack_debs() {
  local dest="$1" what="$2" pkg pdeb
  shift 2
  for pkg in "$@"; do
    pdeb="$debdir/$pkg.deb"
    if ! dpkg-deb --info "$pdeb" >/dev/null 2>&1; then
      mkdir -p "$work/dl"
      if ! (cd "$work/dl" && apt-get download "$pkg" >/dev/null 2>&1); then
        apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
        (cd "$work/dl" && apt-get download "$pkg" >/dev/null) \
          || die "apt-get download $pkg failed ($what); check that Debian's package mirror is reachable."
      fi
      mv "$work/dl/${pkg}_"*.deb "$pdeb"
    fi
    dpkg-deb -x "$pdeb" "$dest"
  done
}

# The Secure Boot chain for UEFI: shim (signed by Microsoft) and GRUB (signed by Debian).
# Only downloaded and unpacked, never installed, like the kernel.
unpack_debs "$work/efi" "the guest's UEFI boot loader" shim-signed grub-efi-amd64-signed
shim="$work/efi/usr/lib/shim/shimx64.efi.signed"
grub="$work/efi/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
[[ -f "$shim" ]] || die "the package shim-signed has no /usr/lib/shim/shimx64.efi.signed"
[[ -f "$grub" ]] || die "the package grub-efi-amd64-signed has no /usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"

# The SSH server (dropbear, with its two libraries), scp's server side
# (OpenSSH's scp) and OpenSSH's sftp-server (OpenSSH 9's scp speaks SFTP),
# unpacked like the rest.
unpack_debs "$work/ssh" "the guest's SSH server" \
  dropbear-bin libtomcrypt1 libtommath1 openssh-client openssh-sftp-server

# The initramfs.
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,mnt,lib/modules,root}
cp /bin/busybox "$root/bin/busybox"
cp "$HACK/guest/init" "$root/init"
cp "$HACK/guest/udhcpc-script" "$root/bin/udhcpc-script"
chmod +x "$root/init" "$root/bin/udhcpc-script"
# dropbear and scp are dynamically linked: every library ldd finds for them,
# the packages' own first, the rest (libc, libz, libgmp, …) from this Debian
# machine.
install -D -m 0755 "$work/ssh/usr/sbin/dropbear" "$root/sbin/dropbear"
install -D -m 0755 "$work/ssh/usr/bin/scp" "$root/bin/scp"
# Where Debian's dropbear looks for it.
install -D -m 0755 "$work/ssh/usr/lib/openssh/sftp-server" "$root/usr/lib/sftp-server"
mkdir -p "$root/lib/x86_64-linux-gnu" "$root/lib64"
for bin in "$root/sbin/dropbear" "$root/bin/scp" "$root/usr/lib/sftp-server"; do
  libs="$(LD_LIBRARY_PATH="$work/ssh/usr/lib/x86_64-linux-gnu" ldd "$bin")" \
    || die "ldd $bin failed"
  if grep -q "not found" <<<"$libs"; then
    die "$bin needs libraries this machine lacks: $(grep 'not found' <<<"$libs" | tr -s ' \t\n' ' ')"
  fi
  for lib in $(awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$libs"); do
    cp -L "$lib" "$root/lib/x86_64-linux-gnu/"
  done
done
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
# A web server that takes bursts of connections (see hack/guest/pagesrv.c).
gcc -static -Os -s -o "$root/bin/pagesrv" "$HACK/guest/pagesrv.c" \
  || die "compiling hack/guest/pagesrv.c failed (gcc and libc6-dev: 'make deps')"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo 'export PS1="\h:\w# "' >"$root/etc/profile"
moddir="$work/kernel/lib/modules/$kver"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
         failover net_failover virtio_net virtio_rng virtio_console \
         scsi_common scsi_mod sd_mod cdrom sr_mod virtio_scsi libata libahci ahci ata_piix \
         isofs fat vfat nls_cp437 nls_iso8859-1 evdev button; do
  f="$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -1)"
  [[ -n "$f" ]] || continue # built in
  case "$f" in
    *.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
    *.zst) zstd -dcq "$f" >"$root/lib/modules/$m.ko" ;;
    *) cp "$f" "$root/lib/modules/$m.ko" ;;
  esac
done
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -9) >"$work/initramfs.cpio.gz"

# The bootable disk: a 64 MiB FAT superfloppy. SeaBIOS boots it through syslinux
# (boot sector + ldlinux.sys, syslinux.cfg); OVMF finds the removable-media path
# EFI/BOOT/BOOTX64.EFI on it (virtio or SATA), which is shim: shim loads grubx64.efi
# from its own directory (without fbx64.efi beside it shim does not run its fallback,
# which would write boot entries and reset), and GRUB, built with the prefix
# /EFI/debian, reads /EFI/debian/grub.cfg. Under Secure Boot shim checks GRUB and,
# through GRUB, the kernel against Debian's CA; the initramfs needs no signature.
make_disk() {
  local vmlinuz="$1" qcow2="$2" img="$work/disk.img"
  truncate -s 64M "$img"
  mkfs.vfat -n IRONVIRT "$img" >/dev/null
  # no_timer_check: under TCG on a loaded machine the kernel's IO-APIC timer
  # check can miss its window and panic ("IO-APIC + timer doesn't work!").
  cat >"$work/syslinux.cfg" <<CFG
DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=tty0 console=ttyS0 no_timer_check
CFG
  mcopy -i "$img" "$vmlinuz" ::vmlinuz
  mcopy -i "$img" "$work/initramfs.cpio.gz" ::initrd.gz
  mcopy -i "$img" "$work/syslinux.cfg" ::syslinux.cfg
  cat >"$work/grub.cfg" <<CFG
set default=0
set timeout=0
menuentry guest {
  linux /vmlinuz console=tty0 console=ttyS0 no_timer_check
  initrd /initrd.gz
}
CFG
  mmd -i "$img" ::EFI ::EFI/BOOT ::EFI/debian
  mcopy -i "$img" "$shim" ::EFI/BOOT/BOOTX64.EFI
  mcopy -i "$img" "$grub" ::EFI/BOOT/grubx64.efi
  mcopy -i "$img" "$work/grub.cfg" ::EFI/debian/grub.cfg
  syslinux --install "$img"
  qemu-img convert -q -f raw -O qcow2 "$img" "$qcow2"
  rm -f "$img"
}
make_disk "$vmlinuz" "$work/disk.qcow2"
make_disk "$small" "$work/disk-small.qcow2"

mkdir -p "$out.tmp"
cp "$vmlinuz" "$out.tmp/vmlinuz"
cp "$small" "$out.tmp/vmlinuz-small"
cp "$work/initramfs.cpio.gz" "$work/disk.qcow2" "$work/disk-small.qcow2" "$out.tmp/"
cat >"$out.tmp/guest.env" <<ENV
GUEST_KERNEL_PACKAGE=$kpkg
GUEST_MARKER=IRONVIRT-GUEST-READY
GUEST_CMDLINE=console=tty0 console=ttyS0 no_timer_check
ENV
rm -rf "$out" && mv "$out.tmp" "$out"
# Builds of the guest unused for a week are dropped (another checkout may still use a recent one).
find "$IRONVIRT_CACHE/guest" -mindepth 1 -maxdepth 1 -type d -name "linux-image-*" ! -name "*.tmp" \
  ! -path "$out" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
echo "$out"
