#!/usr/bin/env bash
# End-to-end test of Damselfly with the real container runtimes and registry
# clients (make e2e). Two test registries (one open, one behind Bearer token
# auth), a supernode, two dfdaemons (nodes A and B), containerd and dockerd:
#
#   - dockerd with registry-mirrors, containerd with hosts.toml (per registry
#     and _default), crane and skopeo pull a generated image through dfdaemon;
#   - a second node pulls it from peers: the registry sends no more bytes;
#   - a private image: every client gets its own token from the registry's
#     realm through dfdaemon (docker's stored login, ctr --user, skopeo
#     --src-creds), and a client without credentials gets 401 for blobs the
#     node already holds;
#   - each registry sends each blob once over all of it.
#
# Runs as root on Debian (bookworm), no stdin needed. Installs what is missing
# (docker.io, containerd, skopeo, jq, curl from apt; crane with go install into
# bin/tools), builds the binaries, starts every daemon on private sockets and
# 127.0.0.1 ports under one temporary directory, and stops and removes all of
# it on exit. Nothing touches the system's own docker or containerd.
#
# Environment:
#   E2E_KEEP=1       keep the work directory (logs, data) after the run
#   E2E_WORKDIR=DIR  parent of the work directory (default /tmp)
#   E2E_LAYERS=LIST  uncompressed layer sizes of the images (default 3MiB,4MiB,5MiB)
#
# Exit status: 0 when every check passed, 1 otherwise.
set -o errexit -o nounset -o pipefail

PROJECT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$PROJECT_ROOT"
export PATH="/usr/local/go/bin:$PROJECT_ROOT/bin/tools:$PATH"
export DEBIAN_FRONTEND=noninteractive

CRANE_VERSION=v0.22.1
LAYERS=${E2E_LAYERS:-3MiB,4MiB,5MiB}
# docker.io's client: the one matching the daemon (an unrelated, newer client
# may be installed as /usr/local/bin/docker).
DOCKER=/usr/bin/docker
# The private registry's only user.
PRIV_USER=e2e
PRIV_PASS=e2e-$RANDOM$RANDOM

START=$SECONDS
# log, die, start, pid_of, print_logs, wait_for, free_port, http_ok, metric,
# install_crane, apt_install, check, info, fail
# shellcheck source=hack/lib/e2e.sh
source "$PROJECT_ROOT/hack/lib/e2e.sh"
# One cluster: every supernode and dfdaemon this script starts presents it.
DAMSELFLY_CLUSTER_TOKEN=e2e-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export DAMSELFLY_CLUSTER_TOKEN

[ "$(id -u)" -eq 0 ] || die "run as root (sudo make e2e): it installs packages and runs dockerd and containerd"

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
	apt_install "${need[@]}"
}

install_packages
install_crane
CRANE=$PROJECT_ROOT/bin/tools/crane

log "building"
make build >/dev/null
go build -o bin/tools/testregistry ./hack/testregistry
go build -o bin/tools/cripull ./hack/cripull
[ -x bin/dfdaemon ] || die "bin/dfdaemon was not built"

# --- 2. the work directory, processes and cleanup -------------------------

mkdir -p "${E2E_WORKDIR:-/tmp}"
WORK=$(mktemp -d "${E2E_WORKDIR:-/tmp}/damselfly-e2e.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/out"

declare -a NAMES=() PIDS=()
RESULTS=()
FAILED=0

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +o errexit
	if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
		print_logs
	fi
	# Containers of the image check, if it stopped half way.
	if [ -n "${DOCKER_CMD+set}" ]; then
		"${DOCKER_CMD[@]}" rm -f damselfly-e2e-sn damselfly-e2e-dfd >/dev/null 2>&1
	fi
	# Stop in reverse order of start: the runtimes first, registries last.
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
	grep -o " ${WORK}[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
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

# --- 3. two test registries with generated images -------------------------

log "work directory $WORK"

# start_registry PREFIX REPO:TAG [testregistry flags]: a registry holding one
# generated image, described by PREFIX_HOST, _CONTROL, _REF (repo:tag),
# _MANIFEST, _CONFIG, _BLOBS (config and layer digests) and _BYTES (their sum).
start_registry() {
	local prefix=$1 ref=$2 name info
	shift 2
	name=registry-${prefix,,}
	info=$WORK/$name.json
	start "$name" bin/tools/testregistry --listen 127.0.0.1:0 --data-dir "$WORK/$name" \
		--push "$ref" --layer-sizes "$LAYERS" --info "$info" "$@"
	wait_for "$name with $ref" 60 "$name" test -s "$info"
	printf -v "${prefix}_HOST" '%s' "$(jq -r .registry "$info")"
	printf -v "${prefix}_CONTROL" '%s' "$(jq -r .control "$info")"
	printf -v "${prefix}_REF" '%s' "$ref"
	printf -v "${prefix}_MANIFEST" '%s' "$(jq -r '.images[0].manifest' "$info")"
	printf -v "${prefix}_CONFIG" '%s' "$(jq -r '.images[0].config.digest' "$info")"
	printf -v "${prefix}_BYTES" '%s' "$(jq '.images[0] | ([.config.size] + [.layers[].size]) | add' "$info")"
	mapfile -t "${prefix}_BLOBS" < <(jq -r '.images[0] | (.config.digest, .layers[].digest)' "$info")
	local -n host=${prefix}_HOST manifest=${prefix}_MANIFEST bytes=${prefix}_BYTES blobs=${prefix}_BLOBS
	log "$name http://$host: $ref manifest $manifest, ${#blobs[@]} blobs, $bytes bytes"
}
start_registry PUB library/e2e:1
start_registry PRIV library/private:1 --auth "$PRIV_USER:$PRIV_PASS"

# registry_blob_bytes PREFIX: the body bytes the registry sent for blob GETs.
registry_blob_bytes() {
	local -n control=${1}_CONTROL
	curl -fsS --max-time 5 "http://$control/_stats" | jq .BlobBytes
}

# --- 4. supernode and two dfdaemons ----------------------------------------

SN_PORT=$(free_port)
start supernode bin/supernode --listen "127.0.0.1:$SN_PORT" --advertise-addr "127.0.0.1:$SN_PORT" \
	--data-dir "$WORK/supernode" --source-allow 127.0.0.1/32
wait_for "supernode on 127.0.0.1:$SN_PORT" 30 supernode http_ok "http://127.0.0.1:$SN_PORT/healthz"

# start_dfdaemon NAME REGISTRY OTHER: a dfdaemon whose upstream for docker's
# registry-mirrors and direct use is REGISTRY, and which lets containerd name
# OTHER with ?ns= (the config of docs/runtimes/containerd.md).
start_dfdaemon() {
	local name=$1 registry=$2 other=$3 port peer_port
	port=$(free_port)
	peer_port=$(free_port)
	cat >"$WORK/$name.yaml" <<-EOF
		mirror:
		  upstreams:
		    - host: "$other"
		      insecure: true
	EOF
	start "$name" bin/dfdaemon --config "$WORK/$name.yaml" \
		--listen "127.0.0.1:$port" --peer-listen "127.0.0.1:$peer_port" --advertise-ip 127.0.0.1 \
		--node "127.0.0.1:$SN_PORT" --registry "http://$registry" --data-dir "$WORK/$name" \
		--source-allow 127.0.0.1/32 --peer-allow 127.0.0.1/32
	wait_for "$name on 127.0.0.1:$port (registry $registry, ns $other)" 30 "$name" http_ok "http://127.0.0.1:$port/healthz"
	printf -v "${name//-/_}_PORT" '%s' "$port"
	printf -v "${name//-/_}_PEER_PORT" '%s' "$peer_port"
}
# Node A mirrors the open registry, node B the private one; each also serves
# the other registry to containerd through ?ns=.
start_dfdaemon dfdaemon-a "$PUB_HOST" "$PRIV_HOST"
start_dfdaemon dfdaemon-b "$PRIV_HOST" "$PUB_HOST"
# shellcheck disable=SC2154 # set by start_dfdaemon with printf -v
MIRROR_A=127.0.0.1:$dfdaemon_a_PORT MIRROR_B=127.0.0.1:$dfdaemon_b_PORT

# --- 5. containerd and dockerd on private sockets -------------------------

# overlayfs where the kernel and file system allow it, else native.
SNAPSHOTTER=native
probe=$WORK/overlay-probe
mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
	umount "$probe/merged"
	SNAPSHOTTER=overlayfs
fi
log "containerd snapshotter: $SNAPSHOTTER"

# containerd with its CRI plugin (what the kubelet and crictl use) reading
# registry hosts from config_path, as docs/runtimes/containerd.md says.
CTRD_SOCK=$WORK/containerd.sock
CRI_HOSTS=$WORK/certs.d-cri
mkdir -p "$CRI_HOSTS" "$WORK/cni/net.d" "$WORK/cni/bin"
cat >"$WORK/containerd.toml" <<EOF
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "$SNAPSHOTTER"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "$WORK/cni/bin"
  conf_dir = "$WORK/cni/net.d"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "$CRI_HOSTS"
EOF
start containerd containerd --config "$WORK/containerd.toml"
CTR=(ctr --address "$CTRD_SOCK")
wait_for "containerd at $CTRD_SOCK" 30 containerd "${CTR[@]}" version
"${CTR[@]}" plugins ls | awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" { print $NF }' | grep -qx ok ||
	die "containerd's CRI plugin did not load (see $LOGS/containerd.log)"

DOCKER_SOCK=$WORK/docker.sock
mkdir -p "$WORK/docker/data" "$WORK/docker/exec" "$WORK/docker/client"
# dockerd starts without a mirror; the checks write the daemon.json of
# docs/runtimes/docker.md and reload it, as an operator would.
echo '{}' >"$WORK/docker/daemon.json"
start dockerd dockerd --config-file "$WORK/docker/daemon.json" \
	--host "unix://$DOCKER_SOCK" --containerd "$CTRD_SOCK" \
	--data-root "$WORK/docker/data" --exec-root "$WORK/docker/exec" --pidfile "$WORK/docker/dockerd.pid" \
	--storage-driver vfs --iptables=false --ip6tables=false --ip-masq=false --bridge none \
	--exec-opt native.cgroupdriver=cgroupfs
# The client's own config directory: no stored logins until a check adds one.
DOCKER_CMD=(env "DOCKER_CONFIG=$WORK/docker/client" "$DOCKER" --host "unix://$DOCKER_SOCK")
wait_for "dockerd at $DOCKER_SOCK" 60 dockerd "${DOCKER_CMD[@]}" version
"${DOCKER_CMD[@]}" version --format 'docker client {{.Client.Version}}, daemon {{.Server.Version}} (API {{.Server.APIVersion}})'

# --- 6. checks -------------------------------------------------------------

# skopeo's signature policy for these copies (the system one may not exist).
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/policy.json"

# verify_blobs PREFIX DIR NAMING: every blob of PREFIX's image is in DIR, with
# the right sha256. NAMING "oci": DIR/blobs/sha256/<hex>; "dir": DIR/<hex>.
verify_blobs() {
	local -n blobs=${1}_BLOBS
	local dir=$2 naming=$3 d hex f got
	for d in "${blobs[@]}"; do
		hex=${d#sha256:}
		case "$naming" in
		oci) f=$dir/blobs/sha256/$hex ;;
		dir) f=$dir/$hex ;;
		esac
		[ -f "$f" ] || fail "blob $d missing in $dir"
		got=$(sha256sum "$f" | cut -d' ' -f1)
		[ "$got" = "$hex" ] || fail "blob $d in $dir has sha256 $got"
	done
	info "all ${#blobs[@]} blobs present with the right sha256"
}

# mirror_blob_bytes PORT: blob bytes dfdaemon's mirror has sent to clients.
mirror_blob_bytes() { metric "http://127.0.0.1:$1/metrics" '^damselfly_mirror_blob_bytes_total'; }

# expect_mirror_bytes PREFIX NODE BEFORE: the mirror of NODE (a or b) has sent
# at least PREFIX's image blob bytes since BEFORE.
expect_mirror_bytes() {
	local -n bytes=${1}_BYTES port=dfdaemon_${2}_PORT
	local after
	after=$(mirror_blob_bytes "$port")
	info "dfdaemon ${2^^} sent $((after - $3)) blob bytes (image blobs: $bytes bytes)"
	# Runtimes fall back to the registry itself when a mirror fails: only
	# dfdaemon's own count shows the blobs came through it.
	[ $((after - $3)) -ge "$bytes" ] || fail "the blobs did not come through dfdaemon ${2^^}"
}

# docker_mirror NODE: daemon.json with registry-mirrors = that node's
# dfdaemon, reloaded with SIGHUP.
docker_mirror() {
	local mirror=$1 n mirrors want
	cat >"$WORK/docker/daemon.json" <<-EOF
		{
		  "registry-mirrors": ["http://$mirror"]
		}
	EOF
	kill -HUP "$(pid_of dockerd)"
	want="[\"http://$mirror/\"]"
	for ((n = 0; n < 40; n++)); do
		mirrors=$("${DOCKER_CMD[@]}" info --format '{{json .RegistryConfig.Mirrors}}')
		[ "$mirrors" = "$want" ] && break
		sleep 0.5
	done
	info "docker info: registry mirrors $mirrors"
	[ "$mirrors" = "$want" ] || fail "dockerd did not pick up the mirror"
}

# docker_pull PREFIX NODE: docker pulls PREFIX's image by its Docker Hub name
# (only the mirror can serve it: there is no Docker Hub here) and has the
# right image.
docker_pull() {
	local -n ref=${1}_REF config=${1}_CONFIG manifest=${1}_MANIFEST port=dfdaemon_${2}_PORT
	local name=${ref#library/} before id digests
	before=$(mirror_blob_bytes "$port")
	timeout 300 "${DOCKER_CMD[@]}" pull "$name"
	expect_mirror_bytes "$1" "$2" "$before"
	id=$("${DOCKER_CMD[@]}" image inspect --format '{{.Id}}' "docker.io/$ref")
	info "docker image $name: id $id"
	[ "$id" = "$config" ] || fail "image id $id, want the config digest $config"
	digests=$("${DOCKER_CMD[@]}" image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' "docker.io/$ref")
	info "docker image $name: repo digests $digests"
	case "$digests" in *"@$manifest"*) ;; *) fail "repo digests do not name the manifest $manifest" ;; esac
}

check_docker_reload() {
	docker_mirror "$MIRROR_A"
	# The mirror is plain HTTP: docker allows that for 127.0.0.0/8 without
	# any insecure-registries entry.
	local insecure
	insecure=$("${DOCKER_CMD[@]}" info --format '{{json .RegistryConfig.InsecureRegistryCIDRs}}')
	info "docker info: insecure registry networks $insecure (daemon.json lists none)"
	grep -q '"127.0.0.0/8"' <<<"$insecure" || fail "127.0.0.0/8 is not an insecure registry network"
}
check_docker() { docker_pull PUB a; }

# hosts_toml DIR HOST MIRROR [SERVER]: DIR/HOST/hosts.toml naming MIRROR as a
# pull/resolve mirror, in front of SERVER when given (the files of
# docs/runtimes/containerd.md).
hosts_toml() {
	mkdir -p "$1/$2"
	{
		[ $# -ge 4 ] && printf 'server = "%s"\n\n' "$4"
		printf '[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$3"
	} >"$1/$2/hosts.toml"
}

# containerd shares content between namespaces: a pull finds blobs another
# pull left and fetches nothing. Each containerd pull starts without any blob
# of its image and removes the image (and so its content) at the end.
CTRD_BLOBS=$WORK/containerd/root/io.containerd.content.v1.content/blobs/sha256
assert_no_containerd_blobs() {
	local -n blobs=${1}_BLOBS
	local d
	for d in "${blobs[@]}"; do
		[ ! -e "$CTRD_BLOBS/${d#sha256:}" ] || fail "containerd already holds blob $d"
	done
}

# ctr_pull PREFIX NODE HOSTS_DIR [ctr pull flags]: ctr pulls PREFIX's image by
# its own registry's name with --hosts-dir HOSTS_DIR, through NODE's
# dfdaemon, gets the right image, then removes it.
ctr_pull() {
	local prefix=$1 node=$2 hosts=$3 ns
	shift 3
	local -n host=${prefix}_HOST ref=${prefix}_REF manifest=${prefix}_MANIFEST port=dfdaemon_${node}_PORT
	local image=$host/$ref before got
	ns=e2e-$RANDOM
	assert_no_containerd_blobs "$prefix"
	before=$(mirror_blob_bytes "$port")
	timeout 300 "${CTR[@]}" -n "$ns" images pull --snapshotter "$SNAPSHOTTER" --hosts-dir "$hosts" "$@" "$image"
	expect_mirror_bytes "$prefix" "$node" "$before"
	got=$("${CTR[@]}" -n "$ns" images ls | awk -v n="$image" '$1 == n { print $3 }')
	info "containerd image $image: $got"
	[ "$got" = "$manifest" ] || fail "image digest $got, want $manifest"
	"${CTR[@]}" -n "$ns" images rm --sync "$image"
	assert_no_containerd_blobs "$prefix"
}

# cri_pull PREFIX NODE [cripull flags]: pulls PREFIX's image through the CRI
# image service (the kubelet's path; hosts from config_path = $CRI_HOSTS,
# where HOST/hosts.toml names NODE's dfdaemon), checks the image ID, then
# removes every image of the CRI namespace.
cri_pull() {
	local prefix=$1 node=$2
	shift 2
	local -n host=${prefix}_HOST ref=${prefix}_REF config=${prefix}_CONFIG port=dfdaemon_${node}_PORT
	local image=$host/$ref before got refs
	hosts_toml "$CRI_HOSTS" "$host" "127.0.0.1:$port" "http://$host"
	assert_no_containerd_blobs "$prefix"
	before=$(mirror_blob_bytes "$port")
	got=$(bin/tools/cripull --address "$CTRD_SOCK" --timeout 300s "$@" "$image")
	expect_mirror_bytes "$prefix" "$node" "$before"
	info "CRI PullImage $image: image $got"
	[ "$got" = "$config" ] || fail "image $got, want the config digest $config"
	mapfile -t refs < <("${CTR[@]}" -n k8s.io images ls -q)
	[ ${#refs[@]} -eq 0 ] || "${CTR[@]}" -n k8s.io images rm --sync "${refs[@]}" >/dev/null
	assert_no_containerd_blobs "$prefix"
}

check_cri() { cri_pull PUB a; }
check_cri_private() { cri_pull PRIV a --user "$PRIV_USER:$PRIV_PASS"; }

check_containerd_registry() {
	hosts_toml "$WORK/certs.d" "$PUB_HOST" "$MIRROR_A" "http://$PUB_HOST"
	ctr_pull PUB a "$WORK/certs.d"
}

# check_setup_containerd: dfdaemon setup-containerd writes the host file of
# the open registry (keeping an existing one), containerd pulls through
# dfdaemon A with it; a second run changes nothing; --undo restores the file
# byte for byte and containerd then pulls from the registry itself.
check_setup_containerd() {
	local dir=$WORK/certs.d-setup ns=e2e-$RANDOM image=$PUB_HOST/$PUB_REF before after out
	mkdir -p "$dir/$PUB_HOST"
	printf '# the operator'"'"'s own file\nserver = "http://%s"\n' "$PUB_HOST" >"$dir/$PUB_HOST/hosts.toml"
	cp "$dir/$PUB_HOST/hosts.toml" "$WORK/out/hosts.toml.before"
	local setup=(bin/dfdaemon setup-containerd --hosts-dir "$dir" --mirror "http://$MIRROR_A"
		--registries "http://$PUB_HOST" --containerd-config "$WORK/containerd.toml")
	out=$("${setup[@]}" 2>&1) || fail "setup-containerd: $out"
	info "setup-containerd: $(tr '\n' ' ' <<<"$out")"
	grep -q "^updated $dir/$PUB_HOST/hosts.toml" <<<"$out" || fail "setup did not update the existing file"
	ctr_pull PUB a "$dir"
	out=$("${setup[@]}" 2>&1) || fail "second setup-containerd: $out"
	grep -q "^unchanged " <<<"$out" || fail "a second run changed something: $out"
	out=$("${setup[@]}" --undo 2>&1) || fail "setup-containerd --undo: $out"
	cmp -s "$dir/$PUB_HOST/hosts.toml" "$WORK/out/hosts.toml.before" || fail "--undo did not restore the file byte for byte"
	[ ! -e "$dir/$PUB_HOST/hosts.toml.damselfly-backup" ] || fail "--undo left the backup"
	assert_no_containerd_blobs PUB
	before=$(mirror_blob_bytes "$dfdaemon_a_PORT")
	timeout 300 "${CTR[@]}" -n "$ns" images pull --snapshotter "$SNAPSHOTTER" --hosts-dir "$dir" "$image" >/dev/null
	after=$(mirror_blob_bytes "$dfdaemon_a_PORT")
	[ "$after" -eq "$before" ] || fail "after --undo containerd still pulled through dfdaemon A ($((after - before)) bytes)"
	info "after --undo: pulled from the registry itself, dfdaemon A sent nothing"
	"${CTR[@]}" -n "$ns" images rm --sync "$image" >/dev/null
	assert_no_containerd_blobs PUB
}

# check_image: make image's image, built with this dockerd, runs a
# supernode and a dfdaemon (host network, data on tmpfs, the non-root user),
# and crane pulls the open image through that dfdaemon.
check_image() {
	local image got sn_port mirror_port peer_port before after
	image=$(DOCKER_HOST="unix://$DOCKER_SOCK" DOCKER_CONFIG="$WORK/docker/client" DOCKER="$DOCKER" \
		./hack/image.sh damselfly-e2e:latest "-X github.com/damselfly/damselfly/pkg/version.version=e2e" | tail -n 1)
	info "image $image"
	got=$("${DOCKER_CMD[@]}" run --rm "$image" supernode --version)
	info "docker run $image supernode --version: $got"
	grep -q supernode <<<"$got" || fail "the image does not run supernode by name"
	"${DOCKER_CMD[@]}" run --rm "$image" dfget --version >/dev/null || fail "the image does not run dfget by name"
	sn_port=$(free_port)
	mirror_port=$(free_port)
	peer_port=$(free_port)
	local data=(--tmpfs /data:rw,mode=0750,uid=65532,gid=65532)
	"${DOCKER_CMD[@]}" run -d --name damselfly-e2e-sn --network host -e DAMSELFLY_CLUSTER_TOKEN "${data[@]}" "$image" \
		supernode --listen "127.0.0.1:$sn_port" --advertise-addr "127.0.0.1:$sn_port" --data-dir /data/supernode \
		--source-allow 127.0.0.1/32 >/dev/null
	"${DOCKER_CMD[@]}" run -d --name damselfly-e2e-dfd --network host -e DAMSELFLY_CLUSTER_TOKEN "${data[@]}" "$image" \
		dfdaemon --listen "127.0.0.1:$mirror_port" --peer-listen "127.0.0.1:$peer_port" --advertise-ip 127.0.0.1 \
		--node "127.0.0.1:$sn_port" --registry "http://$PUB_HOST" --data-dir /data/dfdaemon \
		--source-allow 127.0.0.1/32 --peer-allow 127.0.0.1/32 >/dev/null
	local i
	for i in $(seq 100); do
		http_ok "http://127.0.0.1:$mirror_port/readyz" && break
		sleep 0.2
	done
	http_ok "http://127.0.0.1:$mirror_port/readyz" || {
		"${DOCKER_CMD[@]}" logs damselfly-e2e-sn 2>&1 | tail -n 5
		"${DOCKER_CMD[@]}" logs damselfly-e2e-dfd 2>&1 | tail -n 5
		fail "the containers' dfdaemon is not ready"
	}
	before=$(mirror_blob_bytes "$mirror_port")
	DOCKER_CONFIG=$WORK/crane-anonymous timeout 300 "$CRANE" pull --insecure --format oci "127.0.0.1:$mirror_port/$PUB_REF" "$WORK/out/crane-image"
	verify_blobs PUB "$WORK/out/crane-image" oci
	after=$(mirror_blob_bytes "$mirror_port")
	[ $((after - before)) -ge "$PUB_BYTES" ] || fail "the blobs did not come through the containers' dfdaemon"
	info "crane pulled $PUB_REF through the dfdaemon container ($((after - before)) blob bytes)"
	"${DOCKER_CMD[@]}" rm -f damselfly-e2e-sn damselfly-e2e-dfd >/dev/null
}

check_containerd_default() {
	hosts_toml "$WORK/certs.d-default" _default "$MIRROR_A"
	ctr_pull PUB a "$WORK/certs.d-default"
}

check_crane() {
	local ref=$MIRROR_A/$PUB_REF got
	got=$(DOCKER_CONFIG=$WORK/crane-anonymous timeout 120 "$CRANE" digest --insecure "$ref")
	info "crane digest $ref: $got"
	[ "$got" = "$PUB_MANIFEST" ] || fail "manifest digest $got, want $PUB_MANIFEST"
	DOCKER_CONFIG=$WORK/crane-anonymous timeout 300 "$CRANE" pull --insecure --format oci "$ref" "$WORK/out/crane-pub"
	verify_blobs PUB "$WORK/out/crane-pub" oci
}

# skopeo_copy PREFIX NODE [skopeo copy flags]: skopeo copies PREFIX's image
# through NODE's dfdaemon (direct use) into a dir: layout and checks it.
skopeo_copy() {
	local prefix=$1 node=$2
	shift 2
	local -n ref=${prefix}_REF manifest=${prefix}_MANIFEST port=dfdaemon_${node}_PORT
	local src=docker://127.0.0.1:$port/$ref dst=$WORK/out/skopeo-${prefix,,} got
	timeout 300 skopeo --policy "$WORK/policy.json" copy --src-tls-verify=false "$@" "$src" "dir:$dst"
	got=sha256:$(sha256sum "$dst/manifest.json" | cut -d' ' -f1)
	info "skopeo $src: manifest $got"
	[ "$got" = "$manifest" ] || fail "manifest $got, want $manifest"
	verify_blobs "$prefix" "$dst" dir
}

check_skopeo() { skopeo_copy PUB a; }

check_second_node() {
	local before after m=http://127.0.0.1:$dfdaemon_b_PORT/metrics from_peer from_cdn from_source
	before=$(registry_blob_bytes PUB)
	info "open registry: blob bytes after the pulls through node A: $before (image blobs: $PUB_BYTES bytes)"
	hosts_toml "$WORK/certs.d-b" "$PUB_HOST" "$MIRROR_B" "http://$PUB_HOST"
	ctr_pull PUB b "$WORK/certs.d-b"
	after=$(registry_blob_bytes PUB)
	info "open registry: blob bytes after node B pulled: $after (grew by $((after - before)))"
	[ "$after" -eq "$before" ] || fail "the registry sent $((after - before)) more blob bytes for node B"
	from_peer=$(metric "$m" '^damselfly_peer_received_bytes_total\{from="peer"\}')
	from_cdn=$(metric "$m" '^damselfly_peer_received_bytes_total\{from="cdn"\}')
	from_source=$(metric "$m" '^damselfly_peer_received_bytes_total\{from="source"\}')
	info "node B received $from_peer bytes from peers, $from_cdn from the supernode's CDN, $from_source from the source"
	[ "$from_source" -eq 0 ] || fail "node B fetched from the source itself"
	[ "$from_peer" -gt 0 ] || fail "node B received nothing from other peers"
	[ $((from_peer + from_cdn)) -ge "$PUB_BYTES" ] || fail "node B received fewer P2P bytes than the image holds"
}

# The private registry, through node B (its --registry) and node A (?ns=).

check_docker_private() {
	docker_mirror "$MIRROR_B"
	# What `docker login` stores for Docker Hub; docker login itself would
	# talk to Docker Hub.
	printf '{"auths":{"https://index.docker.io/v1/":{"auth":"%s"}}}\n' \
		"$(printf '%s:%s' "$PRIV_USER" "$PRIV_PASS" | base64 -w0)" >"$WORK/docker/client/config.json"
	docker_pull PRIV b
}

# crane (v0.22) is not used for the private image: it refuses a token realm on
# a private IP literal other than the registry's own host:port, and the test
# registry's realm is 127.0.0.1:<another port>.

check_anonymous_denied() {
	local repo=${PRIV_REF%:*} tag=${PRIV_REF##*:} d code hdr out token url
	# Node B holds every blob of the image now.
	for d in "${PRIV_BLOBS[@]}"; do
		[ -f "$WORK/dfdaemon-b/content/blobs/sha256/${d#sha256:}" ] || fail "node B does not hold $d"
	done
	info "node B holds all ${#PRIV_BLOBS[@]} blobs of $PRIV_REF"
	if out=$(timeout 120 skopeo --policy "$WORK/policy.json" copy --src-tls-verify=false --src-no-creds \
		"docker://$MIRROR_B/$PRIV_REF" "dir:$WORK/out/skopeo-anonymous" 2>&1); then
		fail "skopeo copied $PRIV_REF without credentials"
	fi
	info "skopeo without credentials: $(tail -n 1 <<<"$out")"
	grep -qiE 'unauthorized|authentication required|denied' <<<"$out" || fail "skopeo failed for another reason"
	# What a client without credentials gets from the registry's realm.
	token=$(curl -fsS --max-time 10 -G "$(jq -r .realm "$WORK/registry-priv.json")" \
		--data-urlencode service=registrytest --data-urlencode "scope=repository:$repo:pull" | jq -r '.token // .access_token')
	if [ -z "$token" ] || [ "$token" = null ]; then fail "no anonymous token from the realm"; fi
	for url in "manifests/$tag" "manifests/$PRIV_MANIFEST"; do
		code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 "http://$MIRROR_B/v2/$repo/$url")
		[ "$code" = 401 ] || fail "anonymous GET $url: $code, want 401"
	done
	for d in "${PRIV_BLOBS[@]}"; do
		url=http://$MIRROR_B/v2/$repo/blobs/$d
		code=$(curl -sS -o "$WORK/out/anon-body" -D "$WORK/out/anon-headers" -w '%{http_code}' --max-time 30 "$url")
		[ "$code" = 401 ] || fail "anonymous GET of blob $d: $code, want 401"
		hdr=$(grep -i '^www-authenticate:' "$WORK/out/anon-headers" | tr -d '\r')
		case "$hdr" in *Bearer*realm=*) ;; *) fail "anonymous GET of blob $d: no Bearer challenge ($hdr)" ;; esac
		jq -e '.errors[0].code' "$WORK/out/anon-body" >/dev/null || fail "anonymous GET of blob $d: body is not OCI error JSON"
		code=$(curl -sS -o /dev/null -r 0-99 -w '%{http_code}' --max-time 30 "$url")
		[ "$code" = 401 ] || fail "anonymous Range GET of blob $d: $code, want 401"
		code=$(curl -sS -o /dev/null -I -w '%{http_code}' --max-time 30 "$url")
		[ "$code" = 401 ] || fail "anonymous HEAD of blob $d: $code, want 401"
		code=$(curl -sS -o /dev/null -H "Authorization: Bearer $token" -w '%{http_code}' --max-time 30 "$url")
		case "$code" in 401 | 403) ;; *) fail "GET of blob $d with an anonymous token: $code, want 401 or 403" ;; esac
	done
	info "anonymous GET, HEAD and Range GET of the manifest and every blob: 401, $hdr"
	info "GET of every blob with the realm's anonymous token: refused"
	# The peer port of node B and the supernode's CDN serve members only:
	# knowing the digest is not enough.
	# shellcheck disable=SC2154 # set by start_dfdaemon with printf -v
	for base in "http://127.0.0.1:$dfdaemon_b_PEER_PORT" "http://127.0.0.1:$SN_PORT"; do
		for d in "${PRIV_BLOBS[@]}"; do
			code=$(curl -sS -o /dev/null -r 0-99 -w '%{http_code}' --max-time 30 "$base/upload/v1/tasks/$d")
			[ "$code" = 401 ] || fail "GET of blob $d from $base/upload without the cluster token: $code, want 401"
			code=$(curl -sS -o /dev/null -r 0-99 -H "Authorization: Bearer $DAMSELFLY_CLUSTER_TOKEN" -w '%{http_code}' --max-time 30 "$base/upload/v1/tasks/$d")
			[ "$code" = 206 ] || fail "GET of blob $d from $base/upload with the cluster token: $code, want 206"
		done
	done
	info "upload servers of node B and the supernode: 401 without the cluster token, 206 with it"
}

check_containerd_private() {
	local before after
	before=$(registry_blob_bytes PRIV)
	hosts_toml "$WORK/certs.d-a" "$PRIV_HOST" "$MIRROR_A" "http://$PRIV_HOST"
	ctr_pull PRIV a "$WORK/certs.d-a" --user "$PRIV_USER:$PRIV_PASS"
	after=$(registry_blob_bytes PRIV)
	info "private registry: blob bytes $before before node A pulled, $after after"
	[ "$after" -eq "$before" ] || fail "the registry sent $((after - before)) more blob bytes for node A"
}

check_skopeo_private() { skopeo_copy PRIV b --src-creds "$PRIV_USER:$PRIV_PASS"; }

check_registries_once() {
	local prefix stats d n
	for prefix in PUB PRIV; do
		local -n control=${prefix}_CONTROL blobs=${prefix}_BLOBS bytes=${prefix}_BYTES
		stats=$(curl -fsS --max-time 5 "http://$control/_stats")
		for d in "${blobs[@]}"; do
			n=$(jq -r --arg d "$d" '.BlobGETs[$d] // 0' <<<"$stats")
			[ "$n" -eq 1 ] || fail "registry $prefix: blob $d was fetched $n times"
		done
		n=$(jq .BlobBytes <<<"$stats")
		info "registry $prefix: each of ${#blobs[@]} blobs fetched once, $n blob bytes sent (image blobs: $bytes bytes)"
		[ "$n" -eq "$bytes" ] || fail "registry $prefix sent $n blob bytes for an image of $bytes"
		unset -n control blobs bytes
	done
}

check_fallback() {
	local pid n before after out image=$PUB_HOST/$PUB_REF
	pid=$(pid_of dfdaemon-a)
	kill -TERM "$pid"
	for ((n = 0; n < 100; n++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	! kill -0 "$pid" 2>/dev/null || fail "dfdaemon A did not stop"
	info "dfdaemon A stopped"
	assert_no_containerd_blobs PUB
	before=$(registry_blob_bytes PUB)
	out=$(timeout 300 "${CTR[@]}" -n e2e-fallback images pull --snapshotter "$SNAPSHOTTER" --hosts-dir "$WORK/certs.d" "$image" 2>&1)
	after=$(registry_blob_bytes PUB)
	if grep -q 'trying next host' <<<"$out"; then info "ctr logged: trying next host"; fi
	info "open registry sent $((after - before)) blob bytes for the pull (image blobs: $PUB_BYTES bytes)"
	[ $((after - before)) -ge "$PUB_BYTES" ] || fail "the pull did not go to the registry"
	"${CTR[@]}" -n e2e-fallback images rm --sync "$image" >/dev/null
}

check "dockerd reloads daemon.json with registry-mirrors = dfdaemon A (SIGHUP)" check_docker_reload
check "dockerd (registry-mirrors = dfdaemon A) pulls ${PUB_REF#library/}" check_docker
check "containerd pulls $PUB_HOST/$PUB_REF via certs.d/$PUB_HOST/hosts.toml (mirror dfdaemon A, ?ns=)" check_containerd_registry
check "containerd pulls $PUB_HOST/$PUB_REF via certs.d/_default/hosts.toml (mirror dfdaemon A)" check_containerd_default
check "containerd CRI (kubelet, crictl) pulls $PUB_HOST/$PUB_REF via config_path hosts.toml (mirror dfdaemon A)" check_cri
check "crane pulls $PUB_REF through dfdaemon A" check_crane
check "skopeo copies $PUB_REF through dfdaemon A" check_skopeo
check "second node: containerd through dfdaemon B gets $PUB_REF from peers, not the registry" check_second_node
check "private: dockerd with a stored login pulls ${PRIV_REF#library/} through dfdaemon B" check_docker_private
check "private: no credentials, no manifest or blob (skopeo, GET, HEAD, Range) although node B holds them" check_anonymous_denied
check "private: containerd (ctr --user) through dfdaemon A (?ns=) gets it from peers" check_containerd_private
check "private: containerd CRI with credentials through dfdaemon A (?ns=)" check_cri_private
check "private: skopeo --src-creds through dfdaemon B" check_skopeo_private
check "each registry sent each blob once across all the pulls above" check_registries_once
# After the once-check: each of these makes the registry send the open image again
# (after --undo containerd pulls from the registry itself; the image runs its own supernode).
check "dfdaemon setup-containerd: containerd pulls through dfdaemon A after setup, from the registry after --undo (file restored byte for byte)" check_setup_containerd
check "make image: the image runs each binary by name; its supernode and dfdaemon (docker, host network) serve crane" check_image
check "fallback: with dfdaemon A stopped, containerd pulls from the registry itself (watch the metrics)" check_fallback

echo
echo "==== e2e-runtimes summary ($((SECONDS - START))s) ===="
printf '%s\n' "${RESULTS[@]}"
echo "registry counters (the setup-containerd --undo, image and fallback checks each fetched the open image once more):"
for prefix in PUB PRIV; do
	declare -n control=${prefix}_CONTROL
	echo "registry $prefix: $(curl -fsS --max-time 5 "http://$control/_stats" | jq -c '{Requests, BlobBytes, BlobGETs}' || true)"
	unset -n control
done
passed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^PASS' || true)
failed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^FAIL' || true)
echo "e2e-runtimes: $passed passed, $failed failed"
[ "$FAILED" -eq 0 ]
