#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl from their Go
# modules, pinned, into a cache keyed by version. A second run builds nothing.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"

check_toolchains
# One build at a time per cache: a concurrent build would delete this one's module directory.
mkdir -p "$IRONVIRT_CACHE"
exec 9>"$IRONVIRT_CACHE/.build-k8s.lock"
flock 9

build_etcd() {
  if [[ -x "$ETCD_BIN/etcd" ]]; then return; fi
  log "building etcd $ETCD_VERSION (cached under $ETCD_BIN)"
  local mod="$IRONVIRT_CACHE/etcd/$ETCD_VERSION/module"
  rm -rf "$mod" && mkdir -p "$mod" "$ETCD_BIN"
  (
    cd "$mod"
    go mod init ironvirt.local/etcd-build >/dev/null 2>&1 || die "go mod init failed in $mod"
    go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
      || die "could not fetch etcd $ETCD_VERSION from the Go module proxy; check that it is reachable (GOPROXY=$(go env GOPROXY))."
    go build -trimpath -o "$ETCD_BIN/etcd.tmp" go.etcd.io/etcd/server/v3 \
      || die "building etcd $ETCD_VERSION failed; see the Go errors above."
  )
  mv "$ETCD_BIN/etcd.tmp" "$ETCD_BIN/etcd"
}

build_k8s() {
  if [[ -x "$K8S_BIN/kube-apiserver" && -x "$K8S_BIN/kube-controller-manager" && -x "$K8S_BIN/kubectl" ]]; then return; fi
  log "building kube-apiserver, kube-controller-manager and kubectl $K8S_VERSION (cached under $K8S_BIN)"
  local mod="$IRONVIRT_CACHE/k8s/$K8S_VERSION/module"
  local staging="v0.${K8S_VERSION#v1.}"
  rm -rf "$mod" && mkdir -p "$mod" "$K8S_BIN"
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')" \
    || die "could not fetch k8s.io/kubernetes $K8S_VERSION from the Go module proxy; check that it is reachable."
  [[ -f "$gomod" ]] || die "could not fetch k8s.io/kubernetes $K8S_VERSION from the Go module proxy; check that it is reachable."
  # The staging modules k8s.io/kubernetes replaces with local paths, mapped to their published versions.
  local replaces
  replaces="$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod")"
  [[ -n "$replaces" ]] || die "found no staging replaces in $gomod"
  {
    echo "module ironvirt.local/k8s-build"
    echo
    echo "go 1.26.0"
    echo
    echo "godebug default=go1.26"
    echo
    echo "replace ("
    for m in $replaces; do echo "	$m => $m $staging"; done
    echo ")"
  } >"$mod/go.mod"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
  (
    cd "$mod"
    for cmd in kube-apiserver kube-controller-manager kubectl; do
      go get -tool "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION" \
        || die "could not fetch k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION from the Go module proxy; check that it is reachable."
    done
    for cmd in kube-apiserver kube-controller-manager kubectl; do
      if [[ ! -x "$K8S_BIN/$cmd" ]]; then
        log "go build $cmd"
        go build -trimpath -ldflags "$ldflags" -o "$K8S_BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" \
          || die "building $cmd $K8S_VERSION failed; see the Go errors above."
        mv "$K8S_BIN/$cmd.tmp" "$K8S_BIN/$cmd"
      fi
    done
  )
}

build_etcd
build_k8s
log "control-plane binaries ready: $ETCD_BIN/etcd, $K8S_BIN/{kube-apiserver,kube-controller-manager,kubectl}"
