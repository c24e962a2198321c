#!/usr/bin/env bash
# Starts a local Damselfly node in the foreground: a supernode and, once it
# exists, a dfdaemon. Data lives under ./.damselfly; Ctrl-C stops everything.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
data=${DAMSELFLY_DATA:-./.damselfly}
mkdir -p "$data"

pids=()
stop() {
	trap - INT TERM EXIT
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

./bin/supernode --listen "${SUPERNODE_LISTEN:-:8002}" --data-dir "$data/supernode" &
pids+=($!)

# Members of the cluster present its token: $DAMSELFLY_CLUSTER_TOKEN when
# set (the supernode takes it too), else the one the supernode generates.
token_file=$data/supernode/cluster-token
if [ -z "${DAMSELFLY_CLUSTER_TOKEN:-}" ]; then
	for _ in $(seq 100); do
		[ -s "$token_file" ] && break
		kill -0 "${pids[0]}" 2>/dev/null || exit 1
		sleep 0.1
	done
	[ -s "$token_file" ] || { echo "damselfly: the supernode wrote no $token_file" >&2; exit 1; }
	member=(--cluster-token-file "$token_file")
else
	member=()
fi

if [ -x ./bin/dfdaemon ]; then
	./bin/dfdaemon --node 127.0.0.1:8002 --data-dir "$data/dfdaemon" "${member[@]}" &
	pids+=($!)
fi

echo "damselfly: supernode on :8002 (admin token in $data/supernode/admin-token); Ctrl-C stops"
echo "damselfly: members present the cluster token: DAMSELFLY_CLUSTER_TOKEN=\$(cat $token_file) ./bin/dfget ..."
# Exit as soon as any component exits, taking the others down with it.
wait -n "${pids[@]}"
