#!/usr/bin/env bash
# Builds KubeVirt's own virtctl from the kubevirt.io/kubevirt Go module, pinned,
# into a cache keyed by version: $IRONVIRT_CACHE/virtctl/<version>/virtctl.
# A second run builds nothing. Prints the binary's path on stdout.
#
# kubevirt.io/kubevirt cannot be `go install`ed: its go.mod replaces its staging
# modules (kubevirt.io/api, kubevirt.io/client-go) with local paths and pins
# k8s.io/* with replaces. So, as hack/build-k8s.sh does for Kubernetes, a scratch
# module copies those replaces, points the staging ones at their published
# versions (same tag as kubevirt), and builds cmd/virtctl from there.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"

# Pinned here, not in lib.sh: only this script and the tests that use virtctl need it.
# v1.8.2, not v1.9.0: the proxy here does not serve v1.9.0's kubevirt.io/virt-template-* v0.2.0
# (403), and the checksum database does not know v1.8.1/v1.8.3.
VIRTCTL_VERSION="${VIRTCTL_VERSION:-v1.8.2}"
VIRTCTL_DIR="$IRONVIRT_CACHE/virtctl/$VIRTCTL_VERSION"
VIRTCTL="$VIRTCTL_DIR/virtctl"

if [[ -x "$VIRTCTL" ]]; then
  echo "$VIRTCTL"
  exit 0
fi

# virtctl needs only Go (not Rust): check that alone.
command -v go >/dev/null || die "Go is not installed; install Go 1.26 or newer (https://go.dev/doc/install) and run again."
read -r gomaj gomin <<<"$(go env GOVERSION 2>/dev/null | sed -E 's/^go([0-9]+)\.([0-9]+).*/\1 \2/')"
if [[ -z "${gomaj:-}" ]] || ((gomaj < 1 || (gomaj == 1 && gomin < 26))); then
  die "Go $(go env GOVERSION 2>/dev/null) is too old; virtctl $VIRTCTL_VERSION needs Go 1.26 or newer."
fi

# One build at a time per cache: a concurrent build would delete this one's module directory.
mkdir -p "$IRONVIRT_CACHE"
exec 9>"$IRONVIRT_CACHE/.build-virtctl.lock"
flock 9
# Another run may have built it while this one waited for the lock.
if [[ -x "$VIRTCTL" ]]; then
  echo "$VIRTCTL"
  exit 0
fi

log "building virtctl $VIRTCTL_VERSION (cached under $VIRTCTL_DIR)"
mod="$VIRTCTL_DIR/module"
rm -rf "$mod" && mkdir -p "$mod"

info="$(go mod download -json "kubevirt.io/kubevirt@$VIRTCTL_VERSION")" \
  || die "could not fetch kubevirt.io/kubevirt $VIRTCTL_VERSION from the Go module proxy (GOPROXY=$(go env GOPROXY)): $(sed -n 's/.*"Error": "\(.*\)".*/\1/p' <<<"$info")"
gomod="$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' <<<"$info")"
[[ -f "$gomod" ]] || die "could not fetch kubevirt.io/kubevirt $VIRTCTL_VERSION from the Go module proxy; check that it is reachable and serves that version."
# The tag's commit and time, from the proxy's metadata: reported by `virtctl version`, and reproducible.
git_commit="$(sed -n 's/.*"Hash": "\([0-9a-f]*\)".*/\1/p' <<<"$info" | head -1)"
infofile="$(sed -n 's/.*"Info": "\(.*\)".*/\1/p' <<<"$info")"
build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$infofile" 2>/dev/null | head -1)"

# kubevirt's own go.sum: the exact module hashes it was tested with. Some of its
# dependencies (kubevirt.io/virt-template-*) are not in the checksum database
# the proxy offers, so without these lines the go command cannot verify them.
kvdir="$(sed -n 's/.*"Dir": "\(.*\)".*/\1/p' <<<"$info")"
[[ -f "$kvdir/go.sum" ]] || die "kubevirt.io/kubevirt $VIRTCTL_VERSION has no go.sum at $kvdir"
cp "$kvdir/go.sum" "$mod/go.sum"
chmod u+w "$mod/go.sum"

# The go line kubevirt declares (its language version sets the GODEBUG defaults).
gover="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod" | head -1)"
[[ -n "$gover" ]] || die "found no go directive in $gomod"
# Every replace of kubevirt's go.mod (block and single-line forms), with the
# local-path staging replaces (./staging/src/kubevirt.io/X) mapped to the
# published module X at the same version.
replaces="$(awk '
  /^replace[[:space:]]*\($/ { inblock = 1; next }
  inblock && /^\)/ { inblock = 0; next }
  inblock && /=>/ { sub(/^[[:space:]]+/, ""); print; next }
  /^replace[[:space:]]+[^(]/ { sub(/^replace[[:space:]]+/, ""); print }
' "$gomod" | sed -E "s#^([^ ]+)( [^ ]+)? => \./staging/src/([^ ]+)\$#\1 => \3 $VIRTCTL_VERSION#")"
[[ -n "$replaces" ]] || die "found no replace directives in $gomod"
if grep -q '=> \.' <<<"$replaces"; then
  die "kubevirt.io/kubevirt $VIRTCTL_VERSION has local-path replaces this script does not know how to map: $(grep '=> \.' <<<"$replaces" | tr '\n' ';')"
fi
{
  echo "module ironvirt.local/virtctl-build"
  echo
  echo "go $gover"
  echo
  echo "replace ("
  while IFS= read -r r; do echo "	$r"; done <<<"$replaces"
  echo ")"
} >"$mod/go.mod"

# What `virtctl version` reports (kubevirt's hack/version.sh sets the same variables).
ldflags="-s -w -X kubevirt.io/client-go/version.gitVersion=$VIRTCTL_VERSION"
ldflags+=" -X kubevirt.io/client-go/version.gitTreeState=clean"
[[ -n "$git_commit" ]] && ldflags+=" -X kubevirt.io/client-go/version.gitCommit=$git_commit"
[[ -n "$build_date" ]] && ldflags+=" -X kubevirt.io/client-go/version.buildDate=$build_date"
(
  cd "$mod"
  go get -tool "kubevirt.io/kubevirt/cmd/virtctl@$VIRTCTL_VERSION" \
    || die "could not resolve kubevirt.io/kubevirt/cmd/virtctl@$VIRTCTL_VERSION from the Go module proxy; see the Go errors above."
  log "go build virtctl (CGO_ENABLED=$CGO_ENABLED)"
  go build -trimpath -ldflags "$ldflags" -o "$VIRTCTL.tmp" kubevirt.io/kubevirt/cmd/virtctl \
    || die "building virtctl $VIRTCTL_VERSION failed; see the Go errors above."
)
mv "$VIRTCTL.tmp" "$VIRTCTL"
log "virtctl ready: $VIRTCTL"
echo "$VIRTCTL"
