#!/usr/bin/env bash
# make run: a local Damselfly on loopback only, in the foreground, offline.
#
# Starts an embedded registry (the real distribution registry, hack/testregistry)
# holding a generated image, a supernode, and a dfdaemon whose upstream is that
# registry; wires the cluster token; prints what to try next. Data lives under
# ./.damselfly (DAMSELFLY_DATA); Ctrl-C stops everything.
#
#   UPSTREAM=https://registry-1.docker.io make run   # a real registry instead of the embedded one
#
# Ports (loopback only): RUN_REGISTRY (127.0.0.1:5000), RUN_SUPERNODE (127.0.0.1:8002),
# RUN_MIRROR (127.0.0.1:65001), RUN_PEER (127.0.0.1:65002).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
data=${DAMSELFLY_DATA:-./.damselfly}
registry_addr=${RUN_REGISTRY:-127.0.0.1:5000}
supernode_addr=${RUN_SUPERNODE:-127.0.0.1:8002}
mirror_addr=${RUN_MIRROR:-127.0.0.1:65001}
peer_addr=${RUN_PEER:-127.0.0.1:65002}
upstream=${UPSTREAM:-}
mkdir -p "$data"
chmod o-w "$data"

pids=()
stop() {
	trap - INT TERM EXIT
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

# wait_for WHAT URL: until URL answers 200, or give up after 30 s.
wait_for() {
	for _ in $(seq 150); do
		if curl -fsS -o /dev/null --max-time 1 "$2" 2>/dev/null; then return 0; fi
		sleep 0.2
	done
	echo "make run: $1 did not come up at $2" >&2
	exit 1
}

source_allow=()
if [ -z "$upstream" ]; then
	go build -o bin/tools/testregistry ./hack/testregistry
	rm -f "$data/registry.json"
	bin/tools/testregistry --listen "$registry_addr" --data-dir "$data/registry" \
		--push library/hello:latest --layer-sizes 24MiB,8MiB,2MiB --info "$data/registry.json" \
		2> >(sed 's/^/registry: /' >&2) &
	pids+=($!)
	for _ in $(seq 300); do [ -s "$data/registry.json" ] && break; sleep 0.1; done
	[ -s "$data/registry.json" ] || { echo "make run: the embedded registry did not start" >&2; exit 1; }
	upstream=http://$registry_addr
	# The registry is on this machine's loopback, which the outbound
	# policies deny unless allowed.
	source_allow=(--source-allow 127.0.0.1/32)
fi

./bin/supernode --listen "$supernode_addr" --advertise-addr "$supernode_addr" --data-dir "$data/supernode" \
	"${source_allow[@]}" &
pids+=($!)

# Members present the cluster token: $DAMSELFLY_CLUSTER_TOKEN when set (the
# supernode takes it too), else the one the supernode generates.
token_file=$data/supernode/cluster-token
if [ -z "${DAMSELFLY_CLUSTER_TOKEN:-}" ]; then
	for _ in $(seq 100); do
		[ -s "$token_file" ] && break
		kill -0 "${pids[-1]}" 2>/dev/null || exit 1
		sleep 0.1
	done
	[ -s "$token_file" ] || { echo "make run: the supernode wrote no $token_file" >&2; exit 1; }
	member=(--cluster-token-file "$token_file")
	token_hint="DAMSELFLY_CLUSTER_TOKEN=\$(cat $token_file) "
else
	member=()
	token_hint=""
fi
wait_for supernode "http://$supernode_addr/healthz"

./bin/dfdaemon --listen "$mirror_addr" --peer-listen "$peer_addr" --advertise-ip 127.0.0.1 \
	--node "$supernode_addr" --registry "$upstream" --data-dir "$data/dfdaemon" \
	"${source_allow[@]}" --peer-allow 127.0.0.1/32 "${member[@]}" &
pids+=($!)
wait_for dfdaemon "http://$mirror_addr/readyz"

admin_token=$(cat "$data/supernode/admin-token" 2>/dev/null || echo '$DAMSELFLY_ADMIN_TOKEN')
cat <<EOF

damselfly is running on loopback (Ctrl-C stops it; data in $data):
  supernode  http://$supernode_addr    (admin token: $data/supernode/admin-token)
  dashboard  http://$supernode_addr/dashboard/   (open it in a browser; log in with the admin token)
  dfdaemon   http://$mirror_addr   (registry mirror of $upstream; peers on $peer_addr)
EOF
if [ -n "${source_allow[*]}" ]; then
	manifest=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
		"http://$registry_addr/v2/library/hello/manifests/latest")
	layer=$(grep -o 'sha256:[0-9a-f]\{64\}' <<<"$manifest" | sed -n 2p)
	cat <<EOF
  registry   http://$registry_addr   (embedded, holds library/hello:latest)

Try:
  # the image's manifest and a layer through the mirror (the layer goes peer to peer):
  curl -s http://$mirror_addr/v2/library/hello/manifests/latest -H 'Accept: application/vnd.oci.image.manifest.v1+json'
  curl -s -o layer.bin http://$mirror_addr/v2/library/hello/blobs/$layer && sha256sum layer.bin
  # a whole image with crane or skopeo:
  crane pull --insecure $mirror_addr/library/hello:latest hello.tar
  skopeo copy --src-tls-verify=false docker://$mirror_addr/library/hello:latest dir:hello
  # one file through the P2P network with dfget:
  ${token_hint}./bin/dfget --node $supernode_addr --source-allow 127.0.0.1 --peer-allow 127.0.0.1 \\
      -u http://$registry_addr/v2/library/hello/blobs/$layer --digest $layer -o hello-layer.bin
EOF
else
	cat <<EOF

Try:
  crane pull --insecure $mirror_addr/library/busybox:latest busybox.tar
EOF
fi
cat <<EOF
  # the tasks the supernode holds:
  curl -s -H "Authorization: Bearer $admin_token" http://$supernode_addr/api/v1/tasks
EOF
# Exit as soon as any component exits, taking the others down with it.
wait -n "${pids[@]}"
