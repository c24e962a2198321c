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

if [ -x ./bin/dfdaemon ]; then
	./bin/dfdaemon --node 127.0.0.1:8002 --data-dir "$data/dfdaemon" &
	pids+=($!)
fi

echo "damselfly: supernode on :8002 (admin token in $data/supernode/admin-token); Ctrl-C stops"
# Exit as soon as any component exits, taking the others down with it.
wait -n "${pids[@]}"
