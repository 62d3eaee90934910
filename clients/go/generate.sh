#!/bin/sh
# Regenerates the Go stubs under gen/ from the repo's proto/ tree.
#
# Uses Debian's protoc (protobuf-compiler) and plugins (protoc-gen-go, protoc-gen-go-grpc)
# so the output is byte-identical on any Debian 12 machine; test.sh fails if it drifts.
# The .proto files carry no go_package option (they are shared by every language), so the
# Go import paths are set here with protoc's M options instead.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
module=github.com/modelroute/modelroute/clients/go
PROTOC=${PROTOC:-protoc}

# proto file (relative to proto/) -> Go package directory (relative to gen/)
# and the Go package name (modelroutev1, adminv1: "v1" alone would clash in user code).
files="modelroute/v1/types.proto modelroute/v1/router.proto modelroute/admin/v1/admin.proto"
pkgname() {
  case "$1" in
    modelroute/admin/*) echo adminv1 ;;
    *) echo modelroutev1 ;;
  esac
}

mopts=""
for f in $files; do
  m="M$f=$module/gen/$(dirname "$f");$(pkgname "$f")"
  mopts="$mopts --go_opt=$m --go-grpc_opt=$m"
done

rm -rf "$here/gen"
mkdir -p "$here/gen"
cd "$root/proto"
# shellcheck disable=SC2086 # word splitting of $mopts / $files is intended
"$PROTOC" -I . \
  --go_out="$here/gen" --go_opt=paths=source_relative \
  --go-grpc_out="$here/gen" --go-grpc_opt=paths=source_relative \
  $mopts $files
