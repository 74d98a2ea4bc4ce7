#!/usr/bin/env bash
# Builds the static binary of one service for its FROM-scratch image and puts
# it in bin/<service> under this example (the images' build context).
#
#   scripts/prebuild.sh <service>          e.g. scripts/prebuild.sh gateway
#
# Every service is Go (cmd/<service>/main.go), built with CGO off (a static
# binary) and -trimpath -buildvcs=false (the same bytes from any checkout).
# GOFLAGS from the environment applies: the E2E build sets GOFLAGS=-cover for
# coverage runs. bin/<service> is replaced only when the built bytes differ,
# so an unchanged build leaves the file (and the image's content digest)
# exactly as it was.
set -euo pipefail

usage() { echo "usage: $0 <service>" >&2; exit 2; }
[ $# -eq 1 ] || usage
service=$1
case $service in '' | */* | .*) usage ;; esac

example_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$example_root/cmd/$service/main.go" ]; then
  echo "prebuild: no service \`$service\` (expected cmd/$service/main.go in the example)" >&2
  exit 2
fi
built=$(mktemp "${TMPDIR:-/tmp}/prebuild-$service.XXXXXX")
trap 'rm -f "$built"' EXIT
(cd "$example_root" && CGO_ENABLED=0 GOOS=linux go build -trimpath -buildvcs=false -o "$built" "./cmd/$service")

dest_dir="$example_root/bin"
dest="$dest_dir/$service"
mkdir -p "$dest_dir"
if [ -f "$dest" ] && cmp -s "$built" "$dest"; then
  echo "prebuild: bin/$service unchanged" >&2
  exit 0
fi
# Replace atomically: a concurrent image build sees the old or the new file.
tmp=$(mktemp "$dest_dir/.$service.XXXXXX")
trap 'rm -f "$tmp" "$built"' EXIT
cp "$built" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$dest"
echo "prebuild: bin/$service updated ($(stat -c %s "$dest") bytes)" >&2
