#!/usr/bin/env bash
# End-to-end test of Damselfly with the real container runtimes and registry
# clients (make e2e): dockerd with registry-mirrors, containerd with
# hosts.toml, crane and skopeo pull one generated image through dfdaemon, and a
# second node pulls it from peers instead of the registry.
#
# Runs as root on Debian (bookworm), no stdin needed. Installs what is missing
# (docker.io, containerd, skopeo from apt; crane with go install into
# bin/tools), builds the binaries, starts every daemon on private sockets and
# ports under one temporary directory, and stops and removes all of it on
# exit. Nothing touches the system's own docker or containerd.
#
# Environment:
#   E2E_KEEP=1       keep the work directory (logs, data) after the run
#   E2E_WORKDIR=DIR  parent of the work directory (default /tmp)
#   E2E_LAYERS=LIST  uncompressed layer sizes of the image (default 3MiB,4MiB,5MiB)
#
# Exit status: 0 when every check passed, 1 otherwise.
set -o errexit -o nounset -o pipefail

PROJECT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$PROJECT_ROOT"
export PATH="/usr/local/go/bin:$PROJECT_ROOT/bin/tools:$PATH"
export DEBIAN_FRONTEND=noninteractive

CRANE_VERSION=v0.22.1
LAYERS=${E2E_LAYERS:-3MiB,4MiB,5MiB}
IMAGE_REPO=library/e2e
IMAGE_TAG=1
# docker.io's client: the one matching the daemon (an unrelated, newer client
# may be installed as /usr/local/bin/docker).
DOCKER=/usr/bin/docker

START=$SECONDS
log() { printf '[%4ds] %s\n' $((SECONDS - START)) "$*"; }
die() { log "FATAL: $*"; exit 1; }

# --- 1. install what is missing -------------------------------------------

install_packages() {
	local need=()
	command -v dockerd >/dev/null && [ -x "$DOCKER" ] || need+=(docker.io)
	command -v containerd >/dev/null && command -v ctr >/dev/null || need+=(containerd)
	command -v runc >/dev/null || need+=(runc)
	command -v skopeo >/dev/null || need+=(skopeo)
	command -v jq >/dev/null || need+=(jq)
	command -v curl >/dev/null || need+=(curl)
	command -v make >/dev/null || need+=(make)
	[ ${#need[@]} -eq 0 ] && return 0
	log "installing ${need[*]}"
	# Keep the packages from starting the system's docker and containerd:
	# this test runs its own, and leaves nothing running.
	local policy=/usr/sbin/policy-rc.d made_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		made_policy=1
	fi
	local rc=0
	{ apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; } || rc=$?
	[ -n "$made_policy" ] && rm -f "$policy"
	[ "$rc" -eq 0 ] || die "apt-get install ${need[*]} failed"
}

install_crane() {
	if [ -x bin/tools/crane ] && [ "$(bin/tools/crane version 2>/dev/null)" = "$CRANE_VERSION" ]; then
		return 0
	fi
	log "installing crane $CRANE_VERSION into bin/tools"
	mkdir -p bin/tools
	GOBIN="$PROJECT_ROOT/bin/tools" go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
}

install_packages
install_crane
CRANE=$PROJECT_ROOT/bin/tools/crane

log "building"
make build >/dev/null
go build -o bin/tools/testregistry ./hack/testregistry
[ -x bin/dfdaemon ] || die "bin/dfdaemon was not built"

# --- 2. the work directory, processes and cleanup -------------------------

mkdir -p "${E2E_WORKDIR:-/tmp}"
WORK=$(mktemp -d "${E2E_WORKDIR:-/tmp}/damselfly-e2e.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/out"

declare -a NAMES=() PIDS=()
RESULTS=()
FAILED=0

# start NAME CMD...: runs CMD in the background, output to $LOGS/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$LOGS/$name.log" 2>&1 </dev/null &
	NAMES+=("$name")
	PIDS+=($!)
}

pid_of() {
	local i
	for i in "${!NAMES[@]}"; do
		[ "${NAMES[$i]}" = "$1" ] && { echo "${PIDS[$i]}"; return 0; }
	done
	return 1
}

print_logs() {
	local f
	for f in "$LOGS"/*.log; do
		[ -e "$f" ] || continue
		echo "===== $(basename "$f") (last 200 lines; full log in $f) ====="
		tail -n 200 "$f" || true
	done
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +o errexit
	if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
		print_logs
	fi
	# Stop in reverse order of start: clients' daemons first, registry last.
	local i pid n
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		pid=${PIDS[$i]}
		kill -TERM "$pid" 2>/dev/null || continue
		for ((n = 0; n < 100; n++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "${NAMES[$i]} (pid $pid) did not stop in 10s; killing it"
			kill -KILL "$pid" 2>/dev/null
		fi
		wait "$pid" 2>/dev/null
	done
	# Anything the daemons left mounted under the work directory.
	grep -o " $WORK[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
	if [ "${E2E_KEEP:-0}" = 1 ]; then
		echo "work directory kept: $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for DESC SECONDS PROCESS CMD...: retries CMD every half second until it
# succeeds, PROCESS has exited, or SECONDS have passed.
wait_for() {
	local desc=$1 secs=$2 proc=$3
	shift 3
	local pid deadline=$((SECONDS + secs))
	pid=$(pid_of "$proc")
	until "$@" >/dev/null 2>&1; do
		kill -0 "$pid" 2>/dev/null || die "$proc exited while waiting for $desc (see $LOGS/$proc.log)"
		[ "$SECONDS" -lt "$deadline" ] || die "$desc not ready after ${secs}s"
		sleep 0.5
	done
	log "$desc ready"
}

# free_port: a TCP port on 127.0.0.1 nobody listens on (and not handed out
# before in this run).
USED_PORTS=" "
free_port() {
	local p n
	for ((n = 0; n < 200; n++)); do
		p=$((20000 + RANDOM % 30000))
		case "$USED_PORTS" in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			USED_PORTS+="$p "
			echo "$p"
			return 0
		fi
	done
	die "no free port found"
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

# metric URL REGEX: the sum of the Prometheus samples whose line matches REGEX.
metric() {
	curl -fsS --max-time 5 "$1" | awk -v re="$2" '$0 !~ /^#/ && $0 ~ re { s += $NF } END { printf "%d\n", s }'
}

# --- 3. the test registry with a generated image --------------------------

log "work directory $WORK"
start registry bin/tools/testregistry --listen 127.0.0.1:0 --data-dir "$WORK/registry" \
	--push "$IMAGE_REPO:$IMAGE_TAG" --layer-sizes "$LAYERS" --info "$WORK/registry.json"
wait_for "test registry with $IMAGE_REPO:$IMAGE_TAG" 60 registry test -s "$WORK/registry.json"
REG=$(jq -r .registry "$WORK/registry.json")
CONTROL=$(jq -r .control "$WORK/registry.json")
MANIFEST_DIGEST=$(jq -r .images[0].manifest "$WORK/registry.json")
CONFIG_DIGEST=$(jq -r .images[0].config.digest "$WORK/registry.json")
mapfile -t BLOB_DIGESTS < <(jq -r '.images[0] | (.config.digest, .layers[].digest)' "$WORK/registry.json")
IMAGE_BYTES=$(jq '.images[0] | ([.config.size] + [.layers[].size]) | add' "$WORK/registry.json")
log "registry http://$REG: $IMAGE_REPO:$IMAGE_TAG manifest $MANIFEST_DIGEST, ${#BLOB_DIGESTS[@]} blobs, $IMAGE_BYTES bytes"

registry_blob_bytes() { curl -fsS --max-time 5 "http://$CONTROL/_stats" | jq .BlobBytes; }

# --- 4. supernode and two dfdaemons ----------------------------------------

SN_PORT=$(free_port)
start supernode bin/supernode --listen "127.0.0.1:$SN_PORT" --advertise-addr "127.0.0.1:$SN_PORT" \
	--data-dir "$WORK/supernode" --source-allow 127.0.0.1/32
wait_for "supernode on 127.0.0.1:$SN_PORT" 30 supernode http_ok "http://127.0.0.1:$SN_PORT/healthz"

# start_dfdaemon NAME: a dfdaemon whose upstream (docker registry-mirrors,
# direct use and containerd's ?ns=docker.io) is the test registry, and which
# also accepts containerd's ?ns=<test registry>.
start_dfdaemon() {
	local name=$1 port peer_port
	port=$(free_port)
	peer_port=$(free_port)
	cat >"$WORK/$name.yaml" <<-EOF
		mirror:
		  upstreams:
		    - host: "$REG"
		      insecure: true
	EOF
	start "$name" bin/dfdaemon --config "$WORK/$name.yaml" \
		--listen "127.0.0.1:$port" --peer-listen "127.0.0.1:$peer_port" --advertise-ip 127.0.0.1 \
		--node "127.0.0.1:$SN_PORT" --registry "http://$REG" --data-dir "$WORK/$name"
	wait_for "$name on 127.0.0.1:$port" 30 "$name" http_ok "http://127.0.0.1:$port/healthz"
	printf -v "${name//-/_}_PORT" '%s' "$port"
}
start_dfdaemon dfdaemon-a
start_dfdaemon dfdaemon-b
MIRROR_A=127.0.0.1:$dfdaemon_a_PORT
MIRROR_B=127.0.0.1:$dfdaemon_b_PORT

# --- 5. containerd and dockerd on private sockets -------------------------

CTRD_SOCK=$WORK/containerd.sock
cat >"$WORK/containerd.toml" <<EOF
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
start containerd containerd --config "$WORK/containerd.toml"
CTR=(ctr --address "$CTRD_SOCK")
wait_for "containerd at $CTRD_SOCK" 30 containerd "${CTR[@]}" version
# overlayfs where the kernel and file system allow it, else native.
SNAPSHOTTER=native
if "${CTR[@]}" plugins ls 2>/dev/null | awk '$1 == "io.containerd.snapshotter.v1" && $2 == "overlayfs" { print $NF }' | grep -qx ok; then
	SNAPSHOTTER=overlayfs
fi
log "containerd snapshotter: $SNAPSHOTTER"

DOCKER_SOCK=$WORK/docker.sock
mkdir -p "$WORK/docker/data" "$WORK/docker/exec"
# dockerd starts without a mirror; the first check writes the daemon.json of
# docs/runtimes/docker.md and reloads it, as an operator would.
echo '{}' >"$WORK/docker/daemon.json"
start dockerd dockerd --config-file "$WORK/docker/daemon.json" \
	--host "unix://$DOCKER_SOCK" --containerd "$CTRD_SOCK" \
	--data-root "$WORK/docker/data" --exec-root "$WORK/docker/exec" --pidfile "$WORK/docker/dockerd.pid" \
	--storage-driver vfs --iptables=false --ip6tables=false --ip-masq=false --bridge none \
	--exec-opt native.cgroupdriver=cgroupfs
DOCKER_CMD=("$DOCKER" --host "unix://$DOCKER_SOCK")
wait_for "dockerd at $DOCKER_SOCK" 60 dockerd "${DOCKER_CMD[@]}" version
"${DOCKER_CMD[@]}" version --format 'docker client {{.Client.Version}}, daemon {{.Server.Version}} (API {{.Server.APIVersion}})'

# --- 6. checks -------------------------------------------------------------

# check NAME FUNCTION: runs FUNCTION in a subshell with errexit; its output
# goes to $LOGS/check-<FUNCTION>.log and is shown when it fails.
check() {
	local name=$1 fn=$2 rc t0=$SECONDS
	log "CHECK $name"
	set +o errexit
	( set -o errexit; "$fn" ) >"$LOGS/check-$fn.log" 2>&1
	rc=$?
	set -o errexit
	sed 's/^/    /' "$LOGS/check-$fn.log" | grep -E '^    (info|ERROR):' || true
	if [ "$rc" -eq 0 ]; then
		RESULTS+=("PASS  $name ($((SECONDS - t0))s)")
		log "PASS  $name"
	else
		FAILED=1
		RESULTS+=("FAIL  $name ($((SECONDS - t0))s)")
		log "FAIL  $name"
		sed 's/^/    | /' "$LOGS/check-$fn.log" | tail -n 60
	fi
}

info() { echo "info: $*"; }
fail() { echo "ERROR: $*"; exit 1; }

# verify_blobs DIR NAMING: every blob of the image is in DIR, with the right
# sha256. NAMING "oci": DIR/blobs/sha256/<hex>; "dir": DIR/<hex>.
verify_blobs() {
	local dir=$1 naming=$2 d hex f got
	for d in "${BLOB_DIGESTS[@]}"; do
		hex=${d#sha256:}
		case "$naming" in
		oci) f=$dir/blobs/sha256/$hex ;;
		dir) f=$dir/$hex ;;
		esac
		[ -f "$f" ] || fail "blob $d missing in $dir"
		got=$(sha256sum "$f" | cut -d' ' -f1)
		[ "$got" = "$hex" ] || fail "blob $d in $dir has sha256 $got"
	done
	info "all ${#BLOB_DIGESTS[@]} blobs present with the right sha256"
}

# mirror_blob_bytes PORT: blob bytes dfdaemon's mirror has sent to clients.
mirror_blob_bytes() { metric "http://127.0.0.1:$1/metrics" '^damselfly_mirror_blob_bytes_total'; }

check_docker_reload() {
	cat >"$WORK/docker/daemon.json" <<-EOF
		{
		  "registry-mirrors": ["http://$MIRROR_A"]
		}
	EOF
	kill -HUP "$(pid_of dockerd)"
	local n mirrors want="[\"http://$MIRROR_A/\"]"
	for ((n = 0; n < 40; n++)); do
		mirrors=$("${DOCKER_CMD[@]}" info --format '{{json .RegistryConfig.Mirrors}}')
		[ "$mirrors" = "$want" ] && break
		sleep 0.5
	done
	info "docker info: registry mirrors $mirrors"
	[ "$mirrors" = "$want" ] || fail "dockerd did not pick up the mirror"
}

check_docker() {
	local before after
	before=$(mirror_blob_bytes "$dfdaemon_a_PORT")
	timeout 300 "${DOCKER_CMD[@]}" pull "$IMAGE_REPO:$IMAGE_TAG"
	after=$(mirror_blob_bytes "$dfdaemon_a_PORT")
	info "dfdaemon A sent $((after - before)) blob bytes during the pull (image blobs: $IMAGE_BYTES bytes)"
	[ $((after - before)) -ge "$IMAGE_BYTES" ] || fail "docker did not get the blobs from dfdaemon A"
	local id
	id=$("${DOCKER_CMD[@]}" image inspect --format '{{.Id}}' "docker.io/$IMAGE_REPO:$IMAGE_TAG")
	info "docker image id $id"
	[ "$id" = "$CONFIG_DIGEST" ] || fail "image id $id, want the config digest $CONFIG_DIGEST"
	local want got
	want=$(jq -r '.images[0].manifest' "$WORK/registry.json")
	got=$("${DOCKER_CMD[@]}" image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' "$IMAGE_REPO:$IMAGE_TAG")
	info "repo digests: $got"
	case "$got" in *"@$want"*) ;; *) fail "repo digests do not name the manifest $want" ;; esac
}

# write_hosts DIR HOST SERVER MIRROR: DIR/HOST/hosts.toml naming MIRROR as a
# pull/resolve mirror in front of SERVER (the file of docs/runtimes/containerd.md).
write_hosts() {
	mkdir -p "$1/$2"
	cat >"$1/$2/hosts.toml" <<-EOF
		server = "$3"

		[host."http://$4"]
		  capabilities = ["pull", "resolve"]
	EOF
}

# containerd shares content between namespaces: a pull finds blobs another
# pull left and fetches nothing. Each containerd check starts without any blob
# of the image and removes its image (and so its content) at the end.
CTRD_BLOBS=$WORK/containerd/root/io.containerd.content.v1.content/blobs/sha256
assert_no_containerd_blobs() {
	local d
	for d in "${BLOB_DIGESTS[@]}"; do
		[ ! -e "$CTRD_BLOBS/${d#sha256:}" ] || fail "containerd already holds blob $d"
	done
}
remove_containerd_image() {
	"${CTR[@]}" -n "$1" images rm --sync "$2"
	assert_no_containerd_blobs
}

check_containerd_default() {
	local hosts=$WORK/certs.d-default before after got
	mkdir -p "$hosts/_default"
	cat >"$hosts/_default/hosts.toml" <<-EOF
		[host."http://$MIRROR_A"]
		  capabilities = ["pull", "resolve"]
	EOF
	assert_no_containerd_blobs
	before=$(mirror_blob_bytes "$dfdaemon_a_PORT")
	timeout 300 "${CTR[@]}" -n e2e-default images pull --snapshotter "$SNAPSHOTTER" --hosts-dir "$hosts" \
		"$REG/$IMAGE_REPO:$IMAGE_TAG"
	after=$(mirror_blob_bytes "$dfdaemon_a_PORT")
	got=$("${CTR[@]}" -n e2e-default images ls | awk -v n="$REG/$IMAGE_REPO:$IMAGE_TAG" '$1 == n { print $3 }')
	info "containerd image $REG/$IMAGE_REPO:$IMAGE_TAG: $got"
	[ "$got" = "$MANIFEST_DIGEST" ] || fail "image digest $got, want $MANIFEST_DIGEST"
	info "dfdaemon A sent $((after - before)) blob bytes during the pull (image blobs: $IMAGE_BYTES bytes)"
	[ $((after - before)) -ge "$IMAGE_BYTES" ] || fail "containerd did not get the blobs from dfdaemon A"
	remove_containerd_image e2e-default "$REG/$IMAGE_REPO:$IMAGE_TAG"
}

check_containerd_registry() {
	local hosts=$WORK/certs.d before after got
	write_hosts "$hosts" "$REG" "http://$REG" "$MIRROR_A"
	assert_no_containerd_blobs
	before=$(mirror_blob_bytes "$dfdaemon_a_PORT")
	timeout 300 "${CTR[@]}" -n e2e images pull --snapshotter "$SNAPSHOTTER" --hosts-dir "$hosts" \
		"$REG/$IMAGE_REPO:$IMAGE_TAG"
	after=$(mirror_blob_bytes "$dfdaemon_a_PORT")
	got=$("${CTR[@]}" -n e2e images ls | awk -v n="$REG/$IMAGE_REPO:$IMAGE_TAG" '$1 == n { print $3 }')
	info "containerd image $REG/$IMAGE_REPO:$IMAGE_TAG: $got"
	[ "$got" = "$MANIFEST_DIGEST" ] || fail "image digest $got, want $MANIFEST_DIGEST"
	info "dfdaemon A sent $((after - before)) blob bytes during the pull (image blobs: $IMAGE_BYTES bytes)"
	# containerd falls back to the registry itself when a mirror fails: only
	# dfdaemon's own count shows the blobs came through it.
	[ $((after - before)) -ge "$IMAGE_BYTES" ] ||
		fail "containerd did not get the blobs from dfdaemon A"
	remove_containerd_image e2e "$REG/$IMAGE_REPO:$IMAGE_TAG"
}

check_crane() {
	local ref=$MIRROR_A/$IMAGE_REPO:$IMAGE_TAG got
	got=$(timeout 120 "$CRANE" digest --insecure "$ref")
	info "crane digest $ref: $got"
	[ "$got" = "$MANIFEST_DIGEST" ] || fail "manifest digest $got, want $MANIFEST_DIGEST"
	timeout 300 "$CRANE" pull --insecure --format oci "$ref" "$WORK/out/crane-a"
	verify_blobs "$WORK/out/crane-a" oci
}

check_skopeo() {
	local ref=docker://$MIRROR_A/$IMAGE_REPO:$IMAGE_TAG got
	echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/policy.json"
	timeout 300 skopeo --policy "$WORK/policy.json" copy --src-tls-verify=false "$ref" "dir:$WORK/out/skopeo-a"
	got=$(sha256sum "$WORK/out/skopeo-a/manifest.json" | cut -d' ' -f1)
	info "skopeo manifest sha256:$got"
	[ "sha256:$got" = "$MANIFEST_DIGEST" ] || fail "manifest sha256:$got, want $MANIFEST_DIGEST"
	verify_blobs "$WORK/out/skopeo-a" dir
}

check_second_node() {
	local before after ref=$MIRROR_B/$IMAGE_REPO:$IMAGE_TAG
	before=$(registry_blob_bytes)
	info "registry blob bytes after the pulls through node A: $before (image blobs: $IMAGE_BYTES bytes)"
	timeout 300 "$CRANE" pull --insecure --format oci "$ref" "$WORK/out/crane-b"
	verify_blobs "$WORK/out/crane-b" oci
	after=$(registry_blob_bytes)
	info "registry blob bytes after node B pulled: $after (grew by $((after - before)))"
	[ "$after" -eq "$before" ] || fail "the registry sent $((after - before)) more blob bytes for node B"
	local m=http://127.0.0.1:$dfdaemon_b_PORT/metrics from_peer from_cdn from_source
	from_peer=$(metric "$m" '^damselfly_peer_received_bytes_total\{from="peer"\}')
	from_cdn=$(metric "$m" '^damselfly_peer_received_bytes_total\{from="cdn"\}')
	from_source=$(metric "$m" '^damselfly_peer_received_bytes_total\{from="source"\}')
	info "node B received $from_peer bytes from peers, $from_cdn from the supernode's CDN, $from_source from the source"
	[ "$from_source" -eq 0 ] || fail "node B fetched from the source itself"
	[ "$from_peer" -gt 0 ] || fail "node B received nothing from other peers"
	[ $((from_peer + from_cdn)) -ge "$IMAGE_BYTES" ] || fail "node B received fewer P2P bytes than the image holds"
}

check_registry_once() {
	local stats d n
	stats=$(curl -fsS --max-time 5 "http://$CONTROL/_stats")
	for d in "${BLOB_DIGESTS[@]}"; do
		n=$(jq -r --arg d "$d" '.BlobGETs[$d] // 0' <<<"$stats")
		info "registry GETs of $d: $n"
		[ "$n" -eq 1 ] || fail "blob $d was fetched from the registry $n times"
	done
	n=$(jq .BlobBytes <<<"$stats")
	info "registry blob bytes: $n (image blobs: $IMAGE_BYTES bytes)"
	[ "$n" -eq "$IMAGE_BYTES" ] || fail "the registry sent $n blob bytes for an image of $IMAGE_BYTES"
}

check "dockerd reloads daemon.json with registry-mirrors = dfdaemon A (SIGHUP)" check_docker_reload
check "dockerd (registry-mirrors = dfdaemon A) pulls $IMAGE_REPO:$IMAGE_TAG" check_docker
check "containerd pulls $REG/$IMAGE_REPO:$IMAGE_TAG via certs.d/$REG/hosts.toml (mirror dfdaemon A, ?ns=)" check_containerd_registry
check "containerd pulls $REG/$IMAGE_REPO:$IMAGE_TAG via certs.d/_default/hosts.toml (mirror dfdaemon A)" check_containerd_default
check "crane pulls through dfdaemon A" check_crane
check "skopeo copies through dfdaemon A" check_skopeo
check "second node: dfdaemon B pulls without the registry sending blob bytes" check_second_node
check "the registry sent each blob once across all the pulls above" check_registry_once

echo
echo "==== e2e-runtimes summary ($((SECONDS - START))s) ===="
printf '%s\n' "${RESULTS[@]}"
STATS=$(curl -fsS --max-time 5 "http://$CONTROL/_stats" || echo '{}')
echo "registry: $(jq -c '{Requests, BlobBytes, BlobGETs}' <<<"$STATS")"
passed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^PASS' || true)
failed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^FAIL' || true)
echo "e2e-runtimes: $passed passed, $failed failed"
[ "$FAILED" -eq 0 ]
