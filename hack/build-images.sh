#!/usr/bin/env bash
# make images: builds ironvirt's three images (operator, api, handler) with
# buildah from deploy/docker/*.Dockerfile, the Dockerfiles a user builds with
# `docker build`, without Docker Hub or any other image registry:
#
# 1. The Dockerfiles' base images are made here, under the names the
#    Dockerfiles use, in buildah's local storage, from Debian bookworm's
#    packages (mmdebstrap):
#    - docker.io/library/debian:bookworm-slim: a minbase rootfs;
#    - gcr.io/distroless/cc-debian12:nonroot: libc6, libgcc-s1, libssl3,
#      ca-certificates, tzdata and netbase extracted (no shell, no dpkg), and
#      user nonroot (65532);
#    - docker.io/library/rust:$RUST_VERSION-bookworm: a minbase rootfs with
#      build-essential, pkg-config, git, curl and this machine's rustup
#      toolchain $RUST_VERSION (copied, not downloaded), laid out as in the
#      official image (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo),
#      trusting the host's local CAs (/usr/local/share/ca-certificates) as
#      well as Debian's, for cargo behind a TLS-inspecting proxy.
#    Each carries the hash of its recipe (label io.ironvirt.base-recipe) and is
#    made again only when that changes (IMAGES_REBUILD_BASES=1 forces it).
# 2. `buildah bud --pull=never --layers` builds each Dockerfile unchanged.
#    Its `RUN --mount=type=cache` mounts keep the cargo registry and target/
#    between builds (buildah keeps them in $TMPDIR/buildah-cache-0, here
#    $IRONVIRT_CACHE/images/tmp). Cargo fetches crates from crates.io and the
#    handler's Dockerfile runs apt-get against Debian's mirror: the builds use
#    the host's network (--network host). They run at nice 19.
#    Each image carries its tag as label io.ironvirt.image-tag, so that two
#    tags built from one commit are two images (the apply test's upgrade).
# 3. Each image is written as a docker-archive
#    ($IRONVIRT_CACHE/images/out/ironvirt-<name>-$IMAGE_TAG.tar), which
#    `ctr -n k8s.io images import` reads (ironvirt_testbed::kubelet::image).
#
# Settings (environment): IMAGES="operator api handler" (which to build;
# IMAGES= makes only the base images),
# IMAGE_REPO=ironvirt.local, IMAGE_TAG=dev (images are
# $IMAGE_REPO/ironvirt-<name>:$IMAGE_TAG), IMAGES_SOURCE=head (the build
# context is `git archive HEAD`, so uncommitted changes in the checkout are
# not built; IMAGES_SOURCE=worktree builds the checkout itself, with
# .dockerignore), IMAGES_REBUILD_BASES=1.
# Prints the archives' paths, one a line.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"

IMAGES="${IMAGES-operator api handler}"
IMAGE_REPO="${IMAGE_REPO:-ironvirt.local}"
IMAGE_TAG="${IMAGE_TAG:-dev}"
IMAGES_SOURCE="${IMAGES_SOURCE:-head}"
WORK="$IRONVIRT_CACHE/images"
OUT="$WORK/out"
DEBIAN_SUITE=bookworm
DEBIAN_MIRRORS=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
# What slim images leave out (as Debian's official slim images do).
SLIM_DPKG_OPTS=(
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
)
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

install_image_packages
[[ $(id -u) -eq 0 ]] || die "make images runs buildah as root (its storage is /var/lib/containers/storage)."
case "$IMAGES_SOURCE" in head | worktree) ;; *) die "IMAGES_SOURCE is head or worktree, not $IMAGES_SOURCE" ;; esac

# The toolchain the Dockerfiles pin (their ARG RUST_VERSION default; they must agree).
RUST_VERSION="$(sed -n 's/^ARG RUST_VERSION=//p' "$REPO"/deploy/docker/{operator,api,handler}.Dockerfile | sort -u)"
[[ -n "$RUST_VERSION" && "$RUST_VERSION" != *$'\n'* ]] \
  || die "deploy/docker/*.Dockerfile do not agree on one ARG RUST_VERSION default: $(echo $RUST_VERSION)"
RUST_TRIPLE=x86_64-unknown-linux-gnu

mkdir -p "$WORK/tmp" "$OUT"
# buildah keeps RUN --mount=type=cache directories in $TMPDIR/buildah-cache-<uid>.
export TMPDIR="$WORK/tmp"
# One build at a time per cache.
exec 9>"$WORK/.lock"
flock 9

# base_label IMAGE: the recipe hash IMAGE carries, or nothing when it is missing.
base_label() {
  buildah inspect --type image --format '{{index .OCIv1.Config.Labels "io.ironvirt.base-recipe"}}' "$1" 2>/dev/null || true
}

# commit_rootfs NAME TAR HASH CONFIG...: an image NAME of one layer, the rootfs TAR.
commit_rootfs() {
  local name="$1" tar="$2" hash="$3" c
  shift 3
  c="$(buildah from --pull=never scratch)"
  buildah add --quiet "$c" "$tar" / >/dev/null
  buildah config --os linux --arch amd64 --label "io.ironvirt.base-recipe=$hash" \
    --created-by "ironvirt hack/build-images.sh (mmdebstrap, Debian $DEBIAN_SUITE)" "$@" "$c"
  buildah commit --quiet --rm "$c" "$name" >/dev/null
}

# The recipes: each prints nothing and writes the rootfs tar $1.
recipe_debian_slim() {
  mmdebstrap --quiet --variant=minbase --format=tar "${SLIM_DPKG_OPTS[@]}" \
    "$DEBIAN_SUITE" "$1" "${DEBIAN_MIRRORS[@]}"
}

# distroless/cc: the libraries a Rust binary links (glibc, libgcc; libssl3 and
# the CA bundle for TLS), time zones and /etc/services; no shell, no package
# manager. The packages are only extracted (mmdebstrap runs no hook then), and
# the rest is done here: the CA bundle (update-ca-certificates is a
# maintainer script, which extraction does not run), the users, and dropping
# documentation and the tools the extraction pulls in (openssl, debconf, mawk).
recipe_distroless_cc() {
  local r="$1.d"
  rm -rf "$r"
  mmdebstrap --quiet --variant=extract --format=directory \
    --include=base-files,libc6,libgcc-s1,libssl3,ca-certificates,tzdata,netbase \
    "$DEBIAN_SUITE" "$r" "${DEBIAN_MIRRORS[@]}" || return 1
  mkdir -p "$r/etc/ssl/certs" "$r/home/nonroot" "$r/root" "$r/tmp"
  cat "$r"/usr/share/ca-certificates/*/*.crt >"$r/etc/ssl/certs/ca-certificates.crt"
  printf '%s\n' root:x:0:0:root:/root:/sbin/nologin nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin \
    nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin >"$r/etc/passwd"
  printf '%s\n' root:x:0: nobody:x:65534: nonroot:x:65532: >"$r/etc/group"
  chown 65532:65532 "$r/home/nonroot"
  chmod 700 "$r/root"
  chmod 1777 "$r/tmp"
  rm -rf "$r"/usr/share/{doc,man,info,locale,debconf,perl5,lintian,bash-completion} \
    "$r"/usr/bin/{openssl,c_rehash,debconf*,mawk} "$r"/usr/sbin/update-ca-certificates \
    "$r"/etc/debconf.conf "$r"/etc/apt "$r"/var/cache/* "$r"/var/lib/apt "$r"/var/lib/dpkg
  tar --numeric-owner -C "$r" -cf "$1" . || return 1
  rm -rf "$r"
}

# The host's own CA certificates (update-ca-certificates' local directory), which
# the builder image trusts too: cargo reaches crates.io from inside the build,
# and where outgoing HTTPS goes through a TLS-inspecting proxy (as on the
# machines this was written on), only the host's local CA makes that work. The
# runtime bases (debian-slim, distroless) do not get them.
local_cas() {
  compgen -G "/usr/local/share/ca-certificates/*.crt" | tr '\n' ' ' || true
}

# rust: what the Dockerfiles' build stages use (a C toolchain, pkg-config, git,
# apt for the handler's libvirt-dev) and rustup with toolchain $RUST_VERSION,
# copied from this machine's rustup (its documentation left out) with rustup
# itself as /usr/local/cargo/bin/{rustup,cargo,rustc,rustdoc}.
recipe_rust() {
  IV_LOCAL_CAS="$(local_cas)" IV_TOOLCHAIN="$RUST_TOOLCHAIN_DIR" IV_TOOLCHAIN_NAME="$RUST_VERSION-$RUST_TRIPLE" IV_RUSTUP="$(command -v rustup)" \
    mmdebstrap --quiet --variant=minbase --format=tar "${SLIM_DPKG_OPTS[@]}" \
    --include=build-essential,pkg-config,git,curl,ca-certificates,libssl-dev,xz-utils \
    --customize-hook='set -e; r="$1"; d="$r/usr/local/rustup/toolchains/$IV_TOOLCHAIN_NAME"
      mkdir -p "$d" "$r/usr/local/cargo/bin"
      for p in bin lib libexec etc; do [ ! -e "$IV_TOOLCHAIN/$p" ] || cp -a "$IV_TOOLCHAIN/$p" "$d/"; done
      cp "$IV_RUSTUP" "$r/usr/local/cargo/bin/rustup"
      for b in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do ln -s rustup "$r/usr/local/cargo/bin/$b"; done
      printf "%s\n" "version = \"12\"" "default_toolchain = \"$IV_TOOLCHAIN_NAME\"" "profile = \"minimal\"" \
        "auto_self_update = \"disable\"" >"$r/usr/local/rustup/settings.toml"
      chmod -R a+w "$r/usr/local/rustup" "$r/usr/local/cargo"
      if [ -n "$IV_LOCAL_CAS" ]; then
        cp $IV_LOCAL_CAS "$r/usr/local/share/ca-certificates/"
        chroot "$r" update-ca-certificates >/dev/null
      fi' \
    "$DEBIAN_SUITE" "$1" "${DEBIAN_MIRRORS[@]}"
}

# ensure_base NAME RECIPE [CONFIG...]: makes image NAME with RECIPE when it is
# missing or its recipe changed. The hash covers the recipe's text, its
# settings and, for rust, the toolchain's identity.
ensure_base() {
  local name="$1" recipe="$2" hash tar start old
  shift 2
  hash="$(
    {
      declare -f "$recipe" commit_rootfs
      declare -p DEBIAN_SUITE DEBIAN_MIRRORS SLIM_DPKG_OPTS
      echo "$*"
      if [[ $recipe == recipe_rust ]]; then
        declare -f local_cas
        echo "$RUST_ID"
        # shellcheck disable=SC2046
        cat /dev/null $(local_cas)
      fi
    } | sha256sum | cut -c1-16
  )"
  if [[ "${IMAGES_REBUILD_BASES:-}" != 1 && "$(base_label "$name")" == "$hash" ]]; then
    log "base $name: cached (recipe $hash)"
    return
  fi
  log "base $name: making it from Debian $DEBIAN_SUITE packages (recipe $hash)"
  start=$SECONDS
  tar="$WORK/tmp/rootfs-$hash.tar"
  rm -f "$tar"
  "$recipe" "$tar" || die "mmdebstrap failed for $name (recipe $recipe); see its output above."
  old="$(buildah images --noheading --no-trunc --format '{{.ID}}' "$name" 2>/dev/null || true)"
  commit_rootfs "$name" "$tar" "$hash" "$@"
  rm -f "$tar"
  # The image this one replaces, unless something still uses it.
  [[ -z $old ]] || buildah rmi "$old" >/dev/null 2>&1 || true
  log "base $name: made in $((SECONDS - start)) s"
}

# The host's toolchain for the rust base.
RUST_TOOLCHAIN_DIR="$(rustup run "$RUST_VERSION" rustc --print sysroot 2>/dev/null)" \
  || die "the rust base image copies this machine's Rust $RUST_VERSION toolchain: install it with 'rustup toolchain install $RUST_VERSION --profile minimal'."
RUST_TOOLCHAIN_DIR="$(readlink -f "$RUST_TOOLCHAIN_DIR")"
RUST_ID="$(rustup run "$RUST_VERSION" rustc -vV | sed -n 's/^commit-hash: //p')"
[[ "$(rustup run "$RUST_VERSION" rustc --version)" == "rustc $RUST_VERSION "* ]] \
  || die "rustup's toolchain $RUST_VERSION is $(rustup run "$RUST_VERSION" rustc --version)"

ensure_base docker.io/library/debian:bookworm-slim recipe_debian_slim \
  --env "PATH=$BASE_PATH" --cmd '["bash"]'
ensure_base gcr.io/distroless/cc-debian12:nonroot recipe_distroless_cc \
  --env "PATH=$BASE_PATH" --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --user 65532 --workingdir /home/nonroot
ensure_base "docker.io/library/rust:$RUST_VERSION-bookworm" recipe_rust \
  --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
  --env "PATH=/usr/local/cargo/bin:$BASE_PATH" --env "RUST_VERSION=$RUST_VERSION" --cmd '["bash"]'

# The build context.
if [[ $IMAGES_SOURCE == head ]]; then
  ctx="$WORK/context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  git -C "$REPO" archive --format=tar HEAD | tar -x -C "$ctx"
  # git archive gives every file the commit's time, which would make cargo
  # rebuild every workspace crate in the cached target/ after any commit.
  # Each file gets the time of the last commit that changed it instead, so
  # only the crates whose files changed are built again.
  git -C "$REPO" log --format='@%ct' --name-only HEAD \
    | awk '/^@/ { t = $0; next } NF && !($0 in seen) { seen[$0] = 1; print t "\t" $0 }' \
    | (cd "$ctx" && while IFS=$'\t' read -r t f; do if [[ -f $f ]]; then touch -m -d "$t" -- "$f"; fi; done)
  log "build context: $(git -C "$REPO" rev-parse --short HEAD) (git archive HEAD; uncommitted changes are not built)"
else
  ctx="$REPO"
  log "build context: the checkout $REPO, uncommitted changes included (.dockerignore applies)"
fi

archives=()
for name in $IMAGES; do
  df="$REPO/deploy/docker/$name.Dockerfile"
  [[ -f $df ]] || die "no $df (IMAGES names operator, api, handler)"
  image="$IMAGE_REPO/ironvirt-$name:$IMAGE_TAG"
  log "buildah bud $image from deploy/docker/$name.Dockerfile (nice 19)"
  start=$SECONDS
  nice -n 19 buildah bud --pull=never --layers --network=host \
    --build-arg "RUST_VERSION=$RUST_VERSION" --label "io.ironvirt.image-tag=$IMAGE_TAG" \
    -f "$df" -t "$image" "$ctx" >&2 \
    || die "building $image failed; see buildah's output above."
  log "$image built in $((SECONDS - start)) s"
  archive="$OUT/ironvirt-$name-$IMAGE_TAG.tar"
  rm -f "$archive"
  buildah push --quiet "$image" "docker-archive:$archive:$image" >&2 \
    || die "writing $archive failed"
  archives+=("$archive")
done
buildah images --filter "reference=$IMAGE_REPO/*" >&2
printf '%s\n' "${archives[@]}"
