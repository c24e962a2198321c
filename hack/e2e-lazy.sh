#!/usr/bin/env bash
# End-to-end test of lazy pulling through Damselfly (make e2e-lazy): the
# stargz snapshotter (hack/stargz, our daemon over the library module) as
# containerd's proxy snapshotter, its registry mirrored to dfdaemon.
#
#   - a generated image (a static program, a small file and a few MiB of
#     random files in two layers) is converted to eStargz with ctr-remote
#     and pushed to a test registry;
#   - ctr-remote rpull pulls it through dfdaemon's mirror: the snapshotter
#     mounts each layer over FUSE and containerd downloads no layer;
#   - ctr run starts the program on that snapshot; it reads the small file
#     and one of the big ones, whose chunks the snapshotter fetches on demand
#     with Range requests to dfdaemon;
#   - asserted: the command's output (the sha256 of the files read), that
#     the pull was lazy (FUSE mounts, no layer in containerd's content
#     store, fewer blob bytes than the layers hold went to the snapshotter),
#     that dfdaemon answered the snapshotter's Range requests (206) and the
#     snapshotter never fell back to the registry, and that the registry sent
#     at most one copy of each blob.
#
# Runs as root on Debian (bookworm), no stdin needed. Installs what is missing
# (fuse3, stargz-snapshotter for ctr-remote, containerd, runc, jq, curl from
# apt; crane with go install into bin/tools), builds the binaries, starts
# every daemon on private sockets and 127.0.0.1 ports under one temporary
# directory, and on exit stops all of it, unmounts what it mounted and
# removes the directory.
#
# Environment:
#   E2E_KEEP=1               keep the work directory (logs, data) after the run
#   E2E_WORKDIR=DIR          parent of the work directory (default /tmp)
#   E2E_LAZY_RANGE_MODE=M    how the snapshotter asks for ranges: multi (the
#                            library's default: several ranges in one request
#                            when it needs them), single (one covering range a
#                            request), or auto (default: multi when dfdaemon's
#                            mirror answers a two-range request with 206
#                            multipart/byteranges, single otherwise)
#   E2E_LAZY_BIG=N           number of 2 MiB random files in the second layer (default 3)
#   E2E_LAZY_TIMEOUT=SECS    the whole run's limit (default 1200)
#
# Exit status: 0 when every check passed, 1 otherwise.
set -o errexit -o nounset -o pipefail

PROJECT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$PROJECT_ROOT"
export PATH="/usr/local/go/bin:$PROJECT_ROOT/bin/tools:$PATH"
export DEBIAN_FRONTEND=noninteractive

CRANE_VERSION=v0.22.1
RANGE_MODE=${E2E_LAZY_RANGE_MODE:-auto}
BIG_FILES=${E2E_LAZY_BIG:-3}
LIMIT=${E2E_LAZY_TIMEOUT:-1200}
case "$RANGE_MODE" in auto | multi | single) ;; *)
	echo "E2E_LAZY_RANGE_MODE=$RANGE_MODE: want auto, multi or single" >&2
	exit 2
	;;
esac

START=$SECONDS
# log, die, start, pid_of, print_logs, wait_for, free_port, http_ok, metric,
# install_crane, apt_install, check, info, fail
# shellcheck source=hack/lib/e2e.sh
source "$PROJECT_ROOT/hack/lib/e2e.sh"
DAMSELFLY_CLUSTER_TOKEN=e2e-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export DAMSELFLY_CLUSTER_TOKEN

[ "$(id -u)" -eq 0 ] || die "run as root (sudo make e2e-lazy): it installs packages, mounts FUSE and runs containerd"
[ -c /dev/fuse ] || die "/dev/fuse is missing: the stargz snapshotter mounts layers over FUSE"

# --- 1. install what is missing -------------------------------------------

install_packages() {
	local need=()
	command -v fusermount3 >/dev/null || need+=(fuse3)
	command -v ctr-remote >/dev/null || need+=(stargz-snapshotter)
	command -v containerd >/dev/null || need+=(containerd)
	command -v runc >/dev/null || need+=(runc)
	command -v jq >/dev/null || need+=(jq)
	command -v curl >/dev/null || need+=(curl)
	command -v make >/dev/null || need+=(make)
	apt_install "${need[@]}"
}

install_packages
install_crane
CRANE=$PROJECT_ROOT/bin/tools/crane

# --- 2. the work directory, processes and cleanup -------------------------

mkdir -p "${E2E_WORKDIR:-/tmp}"
WORK=$(mktemp -d "${E2E_WORKDIR:-/tmp}/damselfly-e2e-lazy.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/out"

declare -a NAMES=() PIDS=()
RESULTS=()
FAILED=0
WATCHDOG=
CTR=()
NS=e2e-lazy

# unmount_under DIR: every mount below DIR, deepest first: FUSE with
# fusermount3 (lazily), the rest (overlay rootfs) with umount -l.
unmount_under() {
	local m fstype
	awk -v d="$1" '$2 ~ "^" d "/" { print $3, $2 }' /proc/mounts | sort -k2 -r | while read -r fstype m; do
		case "$fstype" in
		fuse*) fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null ;;
		*) umount -l "$m" 2>/dev/null ;;
		esac
	done
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +o errexit
	if [ -n "$WATCHDOG" ]; then
		pkill -P "$WATCHDOG" 2>/dev/null
		kill "$WATCHDOG" 2>/dev/null
	fi
	if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
		print_logs 100
	fi
	# A container the run check left behind (ctr run --rm removes its own).
	if [ ${#CTR[@]} -gt 0 ] && pid_of containerd >/dev/null; then
		local c
		for c in $(timeout 10 "${CTR[@]}" -n "$NS" containers ls -q 2>/dev/null); do
			timeout 10 "${CTR[@]}" -n "$NS" tasks kill -s SIGKILL "$c" >/dev/null 2>&1
			timeout 10 "${CTR[@]}" -n "$NS" tasks rm -f "$c" >/dev/null 2>&1
			timeout 10 "${CTR[@]}" -n "$NS" containers rm "$c" >/dev/null 2>&1
		done
	fi
	# Stop in reverse order of start: containerd first, the snapshotter
	# (which unmounts its layers on SIGTERM), then dfdaemon, registries last.
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
	unmount_under "$WORK"
	if grep -q " $WORK/" /proc/mounts; then
		echo "still mounted under $WORK:"
		grep " $WORK/" /proc/mounts
	fi
	if [ "${E2E_KEEP:-0}" = 1 ]; then
		echo "work directory kept: $WORK"
	elif ! grep -q " $WORK/" /proc/mounts; then
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The whole run is bounded: past LIMIT seconds the script is stopped (and
# cleans up).
(
	sleep "$LIMIT"
	echo "e2e-lazy: no result after ${LIMIT}s, stopping" >&2
	kill -TERM $$
) </dev/null >/dev/null 2>&1 &
WATCHDOG=$!

# --- 3. build -------------------------------------------------------------

log "work directory $WORK"
log "building"
make build >/dev/null
go build -o bin/tools/testregistry ./hack/testregistry
# The snapshotter and the image's program: the tools module hack/stargz
# (its own go.mod; modules downloaded on demand).
(cd hack/stargz && timeout 900 go build -o "$PROJECT_ROOT/bin/tools/stargz-snapshotter" .)
mkdir -p "$WORK/image/app/bin" "$WORK/image/app/data" "$WORK/image/big/data"
(cd hack/stargz && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$WORK/image/app/bin/lazycat" ./lazycat)

# --- 4. registry, supernode, dfdaemon --------------------------------------

# The registry holds a small generated image besides ours: the mirror's
# answer to a multi-range request is probed on it, not on the image under
# test.
REG_INFO=$WORK/registry.json
start registry bin/tools/testregistry --listen 127.0.0.1:0 --data-dir "$WORK/registry" \
	--push library/probe:1 --layer-sizes 256KiB --info "$REG_INFO"
wait_for "test registry" 60 registry test -s "$REG_INFO"
REG=$(jq -r .registry "$REG_INFO")
CONTROL=$(jq -r .control "$REG_INFO")
PROBE_BLOB=$(jq -r '.images[0].layers[0].digest' "$REG_INFO")
log "registry http://$REG (control http://$CONTROL)"

SN_PORT=$(free_port)
start supernode bin/supernode --listen "127.0.0.1:$SN_PORT" --advertise-addr "127.0.0.1:$SN_PORT" \
	--data-dir "$WORK/supernode" --source-allow 127.0.0.1/32
wait_for "supernode on 127.0.0.1:$SN_PORT" 30 supernode http_ok "http://127.0.0.1:$SN_PORT/healthz"

DFD_PORT=$(free_port)
DFD_PEER_PORT=$(free_port)
MIRROR=127.0.0.1:$DFD_PORT
start dfdaemon bin/dfdaemon --listen "$MIRROR" --peer-listen "127.0.0.1:$DFD_PEER_PORT" --advertise-ip 127.0.0.1 \
	--node "127.0.0.1:$SN_PORT" --registry "http://$REG" --data-dir "$WORK/dfdaemon" \
	--source-allow 127.0.0.1/32 --peer-allow 127.0.0.1/32
wait_for "dfdaemon mirror on $MIRROR (registry $REG)" 30 dfdaemon http_ok "http://$MIRROR/healthz"
mirror_blob_bytes() { metric "http://$MIRROR/metrics" '^damselfly_mirror_blob_bytes_total'; }

# What dfdaemon's mirror answers to a single and to a two-range request, as
# the snapshotter sends them (with ?ns=, the registry the mirror stands for).
probe_ranges() {
	local url="http://$MIRROR/v2/library/probe/blobs/$PROBE_BLOB?ns=$REG" code ctype
	code=$(curl -sS -o "$WORK/out/probe-single" -D "$WORK/out/probe-single.h" -w '%{http_code}' --max-time 120 \
		-H 'Range: bytes=0-9' "$url") || true
	log "mirror probe: Range: bytes=0-9 -> $code $(grep -i '^content-range:' "$WORK/out/probe-single.h" | tr -d '\r')"
	code=$(curl -sS -o "$WORK/out/probe-multi" -D "$WORK/out/probe-multi.h" -w '%{http_code}' --max-time 120 \
		-H 'Range: bytes=0-9,1000-1009' "$url") || true
	ctype=$(grep -i '^content-type:' "$WORK/out/probe-multi.h" | tr -d '\r' | cut -d' ' -f2-)
	MULTI_PROBE="$code $ctype"
	log "mirror probe: Range: bytes=0-9,1000-1009 -> $MULTI_PROBE"
	[ "$code" = 206 ] && [[ "$ctype" == multipart/byteranges* ]]
}
MULTI_OK=0
probe_ranges && MULTI_OK=1
if [ "$RANGE_MODE" = auto ]; then
	if [ "$MULTI_OK" = 1 ]; then RANGE_MODE=multi; else RANGE_MODE=single; fi
	log "range mode: $RANGE_MODE (auto)"
fi

# --- 5. the snapshotter and containerd -------------------------------------

SNAP_SOCK=$WORK/stargz/stargz.sock
SNAP_ROOT=$WORK/stargz/root
REQLOG=$WORK/stargz-requests.jsonl
snap_flags=(--address "$SNAP_SOCK" --root "$SNAP_ROOT" --mirror "$REG=$MIRROR" --request-log "$REQLOG")
[ "$RANGE_MODE" = single ] && snap_flags+=(--single-range)
start stargz bin/tools/stargz-snapshotter "${snap_flags[@]}"
wait_for "stargz snapshotter at $SNAP_SOCK ($RANGE_MODE range mode)" 30 stargz test -S "$SNAP_SOCK"

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
[proxy_plugins.stargz]
  type = "snapshot"
  address = "$SNAP_SOCK"
EOF
start containerd containerd --config "$WORK/containerd.toml"
CTR=(ctr-remote --address "$CTRD_SOCK")
wait_for "containerd at $CTRD_SOCK" 30 containerd "${CTR[@]}" version
"${CTR[@]}" plugins ls | awk '$1 == "io.containerd.snapshotter.v1" && $2 == "stargz" { print $NF }' | grep -qx ok ||
	die "containerd did not load the stargz proxy snapshotter (see $LOGS/containerd.log)"
log "containerd: proxy snapshotter stargz loaded"

# --- 6. the eStargz image ----------------------------------------------------

IMAGE=$REG/lazy/app:esgz
ORIG=$REG/lazy/app:orig
head -c 262144 /dev/urandom >"$WORK/image/app/data/small.bin"
for ((i = 1; i <= BIG_FILES; i++)); do
	head -c 2097152 /dev/urandom >"$WORK/image/big/data/big-$i.bin"
done
SMALL_SUM=sha256:$(sha256sum "$WORK/image/app/data/small.bin" | cut -d' ' -f1)
BIG1_SUM=sha256:$(sha256sum "$WORK/image/big/data/big-1.bin" | cut -d' ' -f1)
for l in app big; do
	tar --numeric-owner --owner=0 --group=0 -C "$WORK/image/$l" -cf "$WORK/image/$l.tar" .
done
DOCKER_CONFIG=$WORK/crane-anonymous timeout 120 "$CRANE" append --insecure --oci-empty-base \
	-f "$WORK/image/app.tar" -f "$WORK/image/big.tar" -t "$ORIG" >/dev/null
log "pushed $ORIG (lazycat, small.bin and $BIG_FILES x 2 MiB random files; gzip layers)"

# ctr-remote converts it to eStargz in containerd (namespace e2e-build), pushes
# it back, and forgets both, so that the lazy pull starts from nothing.
BUILD=("${CTR[@]}" -n e2e-build)
timeout 120 "${BUILD[@]}" images pull --plain-http --snapshotter native "$ORIG" >/dev/null
timeout 300 "${BUILD[@]}" images convert --estargz --oci "$ORIG" "$IMAGE" >/dev/null
timeout 120 "${BUILD[@]}" images push --plain-http "$IMAGE" >/dev/null
timeout 60 "${BUILD[@]}" images rm --sync "$ORIG" "$IMAGE" >/dev/null
DOCKER_CONFIG=$WORK/crane-anonymous "$CRANE" manifest --insecure "$IMAGE" >"$WORK/out/manifest.json"
mapfile -t LAYERS < <(jq -r '.layers[].digest' "$WORK/out/manifest.json")
CONFIG=$(jq -r .config.digest "$WORK/out/manifest.json")
BIG_LAYER=$(jq -r '.layers | max_by(.size) | .digest' "$WORK/out/manifest.json")
BIG_LAYER_SIZE=$(jq -r '.layers | max_by(.size) | .size' "$WORK/out/manifest.json")
LAYER_BYTES=$(jq '[.layers[].size] | add' "$WORK/out/manifest.json")
BLOB_BYTES=$(jq '[.config.size] + [.layers[].size] | add' "$WORK/out/manifest.json")
TOCS=$(jq '[.layers[].annotations["containerd.io/snapshot/stargz/toc.digest"] // empty] | length' "$WORK/out/manifest.json")
log "converted with ctr-remote and pushed $IMAGE: ${#LAYERS[@]} eStargz layers ($LAYER_BYTES bytes; $TOCS with a TOC digest), config $CONFIG"
[ "$TOCS" -eq "${#LAYERS[@]}" ] || die "not every layer of $IMAGE is eStargz (no TOC digest annotation)"
CTRD_BLOBS=$WORK/containerd/root/io.containerd.content.v1.content/blobs/sha256
for d in "${LAYERS[@]}"; do
	[ ! -e "$CTRD_BLOBS/${d#sha256:}" ] || die "containerd still holds layer $d after removing the build images"
done

# From here on the registry counts only what the lazy pull and run cost.
curl -fsS --max-time 5 -X POST "http://$CONTROL/_stats/reset" >/dev/null
MIRROR_BEFORE=$(mirror_blob_bytes)
: >"$REQLOG"

# --- 7. checks ---------------------------------------------------------------

# ms: milliseconds since the epoch.
ms() { date +%s%3N; }

# blob_requests: the request log's entries for blobs of the image, one JSON
# object a line.
blob_requests() {
	jq -c --arg img "/v2/lazy/app/blobs/" 'select(.path | startswith($img))' "$REQLOG"
}

check_rpull() {
	local t0 t1 mounts d n
	t0=$(ms)
	timeout 300 "${CTR[@]}" -n "$NS" images rpull --plain-http --snapshotter stargz \
		--hosts-dir "$WORK/certs.d" "$IMAGE"
	t1=$(ms)
	echo $((t1 - t0)) >"$WORK/out/rpull.ms"
	info "ctr-remote rpull $IMAGE via dfdaemon's mirror: $((t1 - t0)) ms"
	mounts=$(awk -v d="$SNAP_ROOT/" 'index($2, d) == 1 && $3 ~ /^fuse/' /proc/mounts | wc -l)
	info "FUSE mounts under the snapshotter's root: $mounts (layers: ${#LAYERS[@]})"
	[ "$mounts" -ge "${#LAYERS[@]}" ] || fail "the snapshotter did not mount every layer remotely (see $LOGS/stargz.log, $LOGS/containerd.log)"
	n=0
	for d in "${LAYERS[@]}"; do
		[ -e "$CTRD_BLOBS/${d#sha256:}" ] && n=$((n + 1))
	done
	info "layers in containerd's content store after the pull: $n of ${#LAYERS[@]}"
	[ "$n" -eq 0 ] || fail "containerd downloaded $n layers: the pull was not lazy"
	n=$(($(mirror_blob_bytes) - MIRROR_BEFORE))
	echo "$n" >"$WORK/out/mirror-after-rpull"
	info "blob bytes dfdaemon's mirror sent by the end of the pull: $n (config and layers hold $BLOB_BYTES)"
}

check_run() {
	local t0 t1 out want id=lazy-$RANDOM
	t0=$(ms)
	out=$(timeout 300 "${CTR[@]}" -n "$NS" run --rm --snapshotter stargz "$IMAGE" "$id" \
		/bin/lazycat /data/small.bin /data/big-1.bin)
	t1=$(ms)
	echo $((t1 - t0)) >"$WORK/out/run.ms"
	printf '%s\n' "$out" | sed 's/^/info: lazycat: /'
	info "ctr run: $((t1 - t0)) ms"
	want="$SMALL_SUM 262144 /data/small.bin
$BIG1_SUM 2097152 /data/big-1.bin"
	[ "$out" = "$want" ] || fail "lazycat printed something else; want:
$want"
}

check_mirror_ranges() {
	local total ranged ok origin bad
	[ -s "$REQLOG" ] || fail "the snapshotter sent no request (request log $REQLOG empty)"
	total=$(blob_requests | wc -l)
	ranged=$(blob_requests | jq -c --arg m "$MIRROR" 'select(.host == $m and .method == "GET" and (.range // "") != "")' | wc -l)
	ok=$(blob_requests | jq -c --arg m "$MIRROR" 'select(.host == $m and .method == "GET" and (.range // "") != "" and .status == 206)' | wc -l)
	origin=$(blob_requests | jq -c --arg r "$REG" 'select(.host == $r)' | wc -l)
	info "snapshotter blob requests: $total; Range GETs to dfdaemon: $ranged, answered 206: $ok; to the registry itself: $origin"
	info "requests by answer (method status content-type, count):"
	blob_requests | jq -r '[.method, (.status // "error" | tostring), (.content_type // "" | split(";")[0])] | join(" ")' |
		sort | uniq -c | sed 's/^ */info:   /'
	bad=$(blob_requests | jq -c 'select((.status // 0) >= 400 or .error != null)' | head -n 5)
	[ -z "$bad" ] || info "failed requests (first 5): $bad"
	[ "$ok" -gt 0 ] || fail "dfdaemon answered no Range request of the snapshotter with 206"
	[ "$origin" -eq 0 ] || fail "the snapshotter fell back to the registry itself for $origin requests"
	[ -z "$bad" ] || fail "some blob requests failed"
	local multi
	multi=$(blob_requests | jq -c 'select(.range // "" | contains(","))' | wc -l)
	info "multi-range requests: $multi (range mode $RANGE_MODE)"
	# A few requests as sent and answered, for the record.
	blob_requests | jq -r '"\(.method) \(.path | split("/") | last | .[0:19]) Range=\(.range // "-") -> \(.status) \(.content_range // "-") \(.bytes)B \(.ms)ms"' |
		head -n 12 | sed 's/^/info:   /'
}

check_lazy_bytes() {
	local sent got
	sent=$(($(mirror_blob_bytes) - MIRROR_BEFORE))
	got=$(blob_requests | jq -s '[.[].bytes] | add // 0')
	echo "$sent" >"$WORK/out/mirror-total"
	info "dfdaemon's mirror sent $sent blob bytes for the pull and the run; the snapshotter read $got body bytes of blobs"
	info "the image's layers hold $LAYER_BYTES bytes (config and layers $BLOB_BYTES)"
	[ "$sent" -gt 0 ] || fail "dfdaemon's mirror sent nothing"
	[ "$sent" -lt "$LAYER_BYTES" ] || fail "the mirror sent as many bytes as the layers hold: not lazy"
}

check_origin_once() {
	local stats n d gets
	stats=$(curl -fsS --max-time 5 "http://$CONTROL/_stats")
	echo "$stats" >"$WORK/out/registry-stats.json"
	n=$(jq .BlobBytes <<<"$stats")
	info "registry: $n blob bytes sent since the image was pushed (one copy of config and layers: $BLOB_BYTES)"
	for d in "$CONFIG" "${LAYERS[@]}"; do
		gets=$(jq -r --arg d "$d" '.BlobGETs[$d] // 0' <<<"$stats")
		info "registry: blob ${d:0:19}… GETs: $gets"
	done
	[ "$n" -le "$BLOB_BYTES" ] || fail "the registry sent $n blob bytes, more than one copy ($BLOB_BYTES)"
}

# blobread MODE: the library's blob reader (stargz blobread) on the image's
# largest layer through the mirror: read one chunk, then Cache a range around
# it (what prefetch, or a pull over a partly cached layer, does), then read
# that range from the cache. MODE multi asks for the two missing ranges in
# one request; single asks for one covering range. Its output goes to
# $WORK/out/blobread-MODE, its requests to $WORK/blobread-MODE.jsonl.
blobread() {
	local mode=$1 flags=()
	[ "$mode" = single ] && flags+=(--single-range)
	timeout 180 bin/tools/stargz-snapshotter blobread --mirror "$REG=$MIRROR" --ref "$IMAGE" \
		--digest "$BIG_LAYER" --size "$BIG_LAYER_SIZE" --request-log "$WORK/blobread-$mode.jsonl" "${flags[@]}" \
		read:100000:50000 cache:0:300000 read:0:300000 >"$WORK/out/blobread-$mode" 2>&1
}

# mirror_slice OFF LEN: the sha256 of LEN bytes at OFF of the largest layer,
# from the mirror with a single Range.
mirror_slice() {
	echo "sha256:$(curl -fsS --max-time 60 -r "$1-$(($1 + $2 - 1))" \
		"http://$MIRROR/v2/lazy/app/blobs/$BIG_LAYER?ns=$REG" | sha256sum | cut -d' ' -f1)"
}

check_blob_ranges() {
	local want got rc mode
	want="read 100000 50000 $(mirror_slice 100000 50000)
cache 0 300000 ok
read 0 300000 $(mirror_slice 0 300000)"
	for mode in multi single; do
		: >"$WORK/blobread-$mode.jsonl"
		rc=0
		blobread "$mode" || rc=$?
		info "blobread ($mode range mode): exit $rc: $(tail -n 1 "$WORK/out/blobread-$mode")"
		jq -r '"\(.method) Range=\(.range // "-") -> \(.status // .error) \(.content_type // "") \(.content_range // "") \(.bytes)B"' \
			"$WORK/blobread-$mode.jsonl" | sed "s/^/info:   $mode: /"
		if [ "$mode" = "$RANGE_MODE" ]; then
			[ "$rc" -eq 0 ] || fail "the library's blob reader failed in $mode range mode: $(tail -n 1 "$WORK/out/blobread-$mode")"
			got=$(cat "$WORK/out/blobread-$mode")
			[ "$got" = "$want" ] || fail "blobread printed:
$got
want:
$want"
			info "blobread ($mode): the bytes read match the mirror's single-range answers"
		elif [ "$rc" -ne 0 ]; then
			info "KNOWN: in $mode range mode (not this run's) the library's read fails against today's mirror"
		fi
	done
}

mkdir -p "$WORK/certs.d/$REG"
printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$REG" "$MIRROR" \
	>"$WORK/certs.d/$REG/hosts.toml"

check "ctr-remote rpull $IMAGE through dfdaemon: layers mounted remotely (FUSE), none downloaded by containerd" check_rpull
check "ctr run --snapshotter stargz: lazycat reads small.bin and big-1.bin from the lazily pulled image" check_run
check "dfdaemon's mirror answered the snapshotter's Range requests (206); no fallback to the registry" check_mirror_ranges
check "lazy: the mirror sent fewer blob bytes than the layers hold" check_lazy_bytes
check "the registry sent at most one copy of the image's blobs" check_origin_once
# After the counting checks: these read more through the mirror.
check "the library's blob reader: a chunk, then a range around it ($RANGE_MODE range mode; multi-range answer reported)" check_blob_ranges

echo
echo "==== e2e-lazy summary ($((SECONDS - START))s) ===="
printf '%s\n' "${RESULTS[@]}"
echo "range mode: $RANGE_MODE; mirror's answer to a two-range request: ${MULTI_PROBE:-?}"
echo "rpull: $(cat "$WORK/out/rpull.ms" 2>/dev/null || echo ?) ms; run: $(cat "$WORK/out/run.ms" 2>/dev/null || echo ?) ms"
echo "bytes: layers $LAYER_BYTES; mirror sent $(cat "$WORK/out/mirror-after-rpull" 2>/dev/null || echo ?) by the end of the pull, $(cat "$WORK/out/mirror-total" 2>/dev/null || echo ?) in all; registry sent $(jq .BlobBytes "$WORK/out/registry-stats.json" 2>/dev/null || echo ?)"
passed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^PASS' || true)
failed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^FAIL' || true)
echo "e2e-lazy: $passed passed, $failed failed"
[ "$FAILED" -eq 0 ]
