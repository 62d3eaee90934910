#!/bin/sh
# CI entry point for the Go client on a fresh Debian 12 machine:
#   1. apt-get install Go, Debian's Go gRPC/protobuf libraries and the code generators
#      (skipped when already present; needs root or sudo),
#   2. regenerate the stubs and fail if they differ from the committed ones,
#   3. gofmt, go vet, go test (against a real server: $MODELROUTE_BIN, default
#      <repo>/.venv/bin/modelroute, so install the Python package first).
#
# Debian ships its Go libraries as GOPATH sources under /usr/share/gocode and there is no
# module proxy to reach, so the build runs in GOPATH mode (GO111MODULE=off) with this
# directory linked into a temporary GOPATH at its import path.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
module=github.com/modelroute/modelroute/clients/go

pkgs="golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev
      golang-github-golang-protobuf-1-5-dev
      protobuf-compiler libprotobuf-dev protoc-gen-go protoc-gen-go-grpc"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
fi

echo "== generated stubs are up to date"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$here/gen" "$tmp/gen.committed"
"$here/generate.sh"
if ! diff -r "$tmp/gen.committed" "$here/gen"; then
  echo "gen/ differs from the committed stubs: run clients/go/generate.sh and commit" >&2
  exit 1
fi

mkdir -p "$tmp/gopath/src/$(dirname "$module")"
ln -s "$here" "$tmp/gopath/src/$module"
cd "$tmp/gopath/src/$module"
export GO111MODULE=off GOPATH="$tmp/gopath:/usr/share/gocode" GOFLAGS=

echo "== gofmt"
unformatted=$(gofmt -l . )
if [ -n "$unformatted" ]; then
  echo "not gofmt-ed: $unformatted" >&2
  exit 1
fi
echo "== go vet"
go vet ./...
echo "== go test"
go test -count=1 "$@" ./...
