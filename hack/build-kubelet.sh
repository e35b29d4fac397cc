#!/usr/bin/env bash
# Builds kubelet and kube-scheduler from their Go module
# (k8s.io/kubernetes/cmd/{kubelet,kube-scheduler}), pinned to the control
# plane's version, into a cache keyed by version
# ($IRONVIRT_CACHE/kubelet/<version>/bin), and prints kubelet's path
# (kube-scheduler is beside it). A second run builds nothing. kube-scheduler
# is built here rather than with the control plane because only a bed with
# kubelet nodes needs it (Deployments' pods). The
# module set-up is build-k8s.sh's: a scratch module that replaces each staging
# module k8s.io/kubernetes names with its published version. Works from a cold
# Go cache (CI may run `go clean -cache`); runs at nice 19, since the build
# takes minutes on 2 cores and shares them with whatever else runs.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"

check_toolchains
KUBELET_BIN="$(kubelet_bin_dir)"
TOOLS=(kubelet kube-scheduler)
built() {
  local t
  for t in "${TOOLS[@]}"; do [[ -x "$KUBELET_BIN/$t" ]] || return 1; done
}
if built; then
  echo "$KUBELET_BIN/kubelet"
  exit 0
fi
mkdir -p "$IRONVIRT_CACHE"
# One build at a time per cache (a concurrent one would delete this one's module directory).
exec 9>"$IRONVIRT_CACHE/.build-kubelet.lock"
flock 9
if built; then
  echo "$KUBELET_BIN/kubelet"
  exit 0
fi

log "building ${TOOLS[*]} $K8S_VERSION (cached under $KUBELET_BIN)"
start=$SECONDS
mod="$IRONVIRT_CACHE/kubelet/$K8S_VERSION/module"
staging="v0.${K8S_VERSION#v1.}"
rm -rf "$mod" && mkdir -p "$mod" "$KUBELET_BIN"
gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')" \
  || die "could not fetch k8s.io/kubernetes $K8S_VERSION from the Go module proxy; check that it is reachable."
[[ -f "$gomod" ]] || die "could not fetch k8s.io/kubernetes $K8S_VERSION from the Go module proxy; check that it is reachable."
replaces="$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod")"
[[ -n "$replaces" ]] || die "found no staging replaces in $gomod"
{
  echo "module ironvirt.local/kubelet-build"
  echo
  echo "go 1.26.0"
  echo
  echo "godebug default=go1.26"
  echo
  echo "replace ("
  for m in $replaces; do echo "	$m => $m $staging"; done
  echo ")"
} >"$mod/go.mod"
minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
(
  cd "$mod"
  for t in "${TOOLS[@]}"; do
    nice -n 19 go get -tool "k8s.io/kubernetes/cmd/$t@$K8S_VERSION" \
      || die "could not fetch k8s.io/kubernetes/cmd/$t@$K8S_VERSION from the Go module proxy; check that it is reachable."
  done
  for t in "${TOOLS[@]}"; do
    [[ -x "$KUBELET_BIN/$t" ]] && continue
    log "go build $t (nice 19)"
    nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$KUBELET_BIN/$t.tmp" "k8s.io/kubernetes/cmd/$t" \
      || die "building $t $K8S_VERSION failed; see the Go errors above."
    mv "$KUBELET_BIN/$t.tmp" "$KUBELET_BIN/$t"
  done
)
log "${TOOLS[*]} $K8S_VERSION built in $((SECONDS - start)) s"
echo "$KUBELET_BIN/kubelet"
