# Functions the end-to-end scripts share (hack/e2e-runtimes.sh,
# hack/e2e-lazy.sh); sourced by them. They expect START (the run's start in
# SECONDS), LOGS (the log directory), the arrays NAMES and PIDS (processes
# started, for cleanup), RESULTS and FAILED (checks), PROJECT_ROOT and
# CRANE_VERSION.

USED_PORTS=" "

log() { printf '[%4ds] %s\n' $((SECONDS - START)) "$*"; }

die() { log "FATAL: $*"; exit 1; }

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

# start NAME CMD...: runs CMD in the background, output to $LOGS/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$LOGS/$name.log" 2>&1 </dev/null &
	NAMES+=("$name")
	PIDS+=($!)
}

# pid_of NAME: the pid of the process started as NAME.
pid_of() {
	local i
	for i in "${!NAMES[@]}"; do
		[ "${NAMES[$i]}" = "$1" ] && { echo "${PIDS[$i]}"; return 0; }
	done
	return 1
}

# print_logs [N]: the last N (200) lines of every log, after a failure.
print_logs() {
	local f
	for f in "$LOGS"/*.log; do
		[ -e "$f" ] || continue
		echo "===== $(basename "$f") (last ${1:-200} lines; full log in $f) ====="
		tail -n "${1:-200}" "$f" || true
	done
}

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
free_port() {
	local p n
	for ((n = 0; n < 200; n++)); do
		p=$((20000 + RANDOM % 12000))
		case "$USED_PORTS" in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			USED_PORTS+="$p "
			echo "$p"
			return 0
		fi
	done
	die "no free port found"
}

install_crane() {
	if [ -x bin/tools/crane ] && [ "$(bin/tools/crane version 2>/dev/null)" = "$CRANE_VERSION" ]; then
		return 0
	fi
	log "installing crane $CRANE_VERSION into bin/tools"
	mkdir -p bin/tools
	GOBIN="$PROJECT_ROOT/bin/tools" timeout 600 go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
}

# metric URL REGEX: the sum of the Prometheus samples whose line matches REGEX.
metric() {
	curl -fsS --max-time 5 "$1" | awk -v re="$2" '$0 !~ /^#/ && $0 ~ re { s += $NF } END { printf "%d\n", s }'
}

# apt_install PKG...: installs the Debian packages named (none: nothing),
# keeping them from starting the system's own daemons (docker, containerd):
# the scripts run their own and leave nothing running.
apt_install() {
	[ $# -eq 0 ] && return 0
	log "installing $*"
	local policy=/usr/sbin/policy-rc.d made_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		made_policy=1
	fi
	local rc=0
	{ timeout 300 apt-get update -q && timeout 900 apt-get install -y -q --no-install-recommends "$@"; } || rc=$?
	[ -n "$made_policy" ] && rm -f "$policy"
	[ "$rc" -eq 0 ] || die "apt-get install $* failed"
}

# check NAME FUNCTION: runs FUNCTION in a subshell with errexit; its output
# goes to $LOGS/check-<FUNCTION>.log and is shown when it fails.
check() {
	local name=$1 fn=$2 rc t0=$SECONDS
	log "CHECK $name"
	set +o errexit
	(
		set -o errexit
		"$fn"
	) >"$LOGS/check-$fn.log" 2>&1
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
