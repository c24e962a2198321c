#!/usr/bin/env bash
# Builds the Damselfly image with docker, offline: static binaries, the
# host's CA bundle and a passwd/group with the non-root user 65532, FROM
# scratch. Usage: hack/image.sh IMAGE VERSION_LDFLAGS. The last line printed
# is the image reference.
set -o errexit -o nounset -o pipefail
PROJECT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$PROJECT_ROOT"
export PATH="/usr/local/go/bin:$PATH"

image=${1:?usage: hack/image.sh IMAGE [LDFLAGS]}
ldflags=${2:-}
docker=${DOCKER:-docker}
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -r "$ca" ] || { echo "image: no CA bundle at $ca (apt-get install ca-certificates, or set CA_BUNDLE)" >&2; exit 1; }
command -v "$docker" >/dev/null || { echo "image: no docker client ($docker)" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/etc/ssl/certs"
for b in supernode dfget dfdaemon registry-cache; do
	echo "go build (static) $b" >&2
	CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$ctx/bin/$b" "./$b"
done
cp "$ca" "$ctx/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\ndamselfly:x:65532:65532:damselfly:/nonexistent:/sbin/nologin\n' >"$ctx/etc/passwd"
printf 'root:x:0:\ndamselfly:x:65532:\n' >"$ctx/etc/group"
cp hack/image/Dockerfile "$ctx/Dockerfile"
# The classic builder needs nothing from the network for FROM scratch.
DOCKER_BUILDKIT=0 "$docker" build --quiet -t "$image" "$ctx" >&2
echo "$image"
