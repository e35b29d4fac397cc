#!/usr/bin/env bash
# make ui: rebuild the web console of `ironctl ui` (cli/ui/dist: index.html,
# app.js, app.css, embedded into ironctl with include_bytes!) from its
# TypeScript: npm ci (the pinned package-lock.json), a type check, esbuild.
#
#   hack/ui.sh           rebuild cli/ui/dist
#   hack/ui.sh --check   rebuild into a temporary directory and exit 1 if the
#                        committed cli/ui/dist differs (the bundle is stale)
#
# Needs Node.js >= 20 and npm; the npm registry (or a warm npm cache).
set -euo pipefail
UI="$(cd "$(dirname "$0")/../cli/ui" && pwd)"
FILES=(index.html app.js app.css)

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: hack/ui.sh [--check]" >&2; exit 2 ;;
esac

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "hack/ui.sh: $tool is not installed (the web console needs Node.js >= 20 and npm)" >&2
    exit 2
  fi
done

cd "$UI"
# --ignore-scripts: esbuild runs from its platform package without its postinstall.
npm ci --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error
npx --no-install tsc --noEmit -p .

if [[ $check == 0 ]]; then
  node build.mjs dist
  echo "cli/ui/dist rebuilt: $(cd dist && wc -c "${FILES[@]}" | awk '$2 != "total" {printf "%s %d B  ", $2, $1}')"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
node build.mjs "$tmp"
stale=()
for f in "${FILES[@]}"; do
  if ! cmp -s "$tmp/$f" "dist/$f"; then
    stale+=("$f")
  fi
done
extra="$(cd dist && ls -A | grep -vxF -e index.html -e app.js -e app.css || true)"
if (( ${#stale[@]} )) || [[ -n $extra ]]; then
  {
    echo "hack/ui.sh --check: cli/ui/dist is out of date with cli/ui (src, index.html, style.css, package-lock.json)."
    (( ${#stale[@]} )) && echo "  differs from a fresh build: ${stale[*]}"
    [[ -n $extra ]] && echo "  not part of the build: $(echo "$extra" | tr '\n' ' ')"
    echo "  Run \`make ui\` (hack/ui.sh) and commit cli/ui/dist."
  } >&2
  exit 1
fi
echo "cli/ui/dist is up to date"
