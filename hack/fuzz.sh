#!/usr/bin/env bash
# Runs every Go fuzz target of the module for a while each.
#
#   hack/fuzz.sh [FUZZTIME]     e.g. hack/fuzz.sh 60s (make fuzz)
#
# Targets are found with `go test -list '^Fuzz'` over the packages that
# declare one, and each runs alone in its package (`-run '^$' -fuzz '^Name$'`). The
# first crasher stops the run: its input, written by go test under
# testdata/fuzz/<Name>/, is printed and the script exits 1. Each target is
# bounded by FUZZTIME plus FUZZ_BUILD_SLACK seconds for compiling, so a hung
# target cannot hang the run.
set -euo pipefail

fuzztime="${1:-${FUZZTIME:-10s}}"
slack="${FUZZ_BUILD_SLACK:-180}"
go="${GO:-go}"

cd "$(dirname "$0")/.."

case "$fuzztime" in
*x) secs=$(( ${fuzztime%x} / 1000 + 1 )) ;; # iteration counts: roughly bounded
*s) secs=${fuzztime%s} ;;
*m) secs=$(( ${fuzztime%m} * 60 )) ;;
*) echo "fuzz.sh: FUZZTIME must look like 2s, 1m or 1000x, not $fuzztime" >&2; exit 2 ;;
esac
limit=$(( ${secs%%.*} + slack ))

# Packages with a fuzz target; go test -list then names the targets of each.
mapfile -t dirs < <(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' . |
	grep -v '/testdata/' | xargs -r -n1 dirname | sort -u)
if [ "${#dirs[@]}" -eq 0 ]; then
	echo "fuzz.sh: no fuzz targets" >&2
	exit 1
fi

# One go test -list for all of them: it prints each package's targets, then
# "ok <import path> <time>".
module=$("$go" list -m)
list=$("$go" test -list '^Fuzz' "${dirs[@]}") || { echo "$list"; exit 1; }
targets=()
pending=()
while read -r line; do
	case "$line" in
	Fuzz*) pending+=("$line") ;;
	ok*)
		pkg=$(awk '{print $2}' <<<"$line")
		dir=".${pkg#"$module"}"
		for name in "${pending[@]}"; do targets+=("$dir $name"); done
		pending=()
		;;
	esac
done <<<"$list"
if [ "${#targets[@]}" -eq 0 ]; then
	echo "fuzz.sh: go test -list found no fuzz targets" >&2
	exit 1
fi

count=0
start=$SECONDS
for target in "${targets[@]}"; do
	dir=${target% *}
	name=${target#* }
	count=$(( count + 1 ))
	echo "fuzz $dir $name ($fuzztime)"
	before=$(find "$dir/testdata/fuzz/$name" -type f 2>/dev/null | sort || true)
	ok=false
	for attempt in 1 2; do
		if out=$(timeout --kill-after=10 "$limit" "$go" test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$dir" 2>&1); then
			ok=true
			break
		fi
		after=$(find "$dir/testdata/fuzz/$name" -type f 2>/dev/null | sort || true)
		# With a short -fuzztime the fuzzing engine itself can stop on its
		# own deadline ("context deadline exceeded") while a worker is busy,
		# without any crasher. That is retried once; a crasher never is.
		if [ "$before" = "$after" ] && [ "$attempt" -eq 1 ] && grep -q 'context deadline exceeded' <<<"$out"; then
			echo "fuzz: $name stopped on the engine's deadline without a crasher; again"
			continue
		fi
		break
	done
	if ! $ok; then
		echo "$out" | tail -40
		after=$(find "$dir/testdata/fuzz/$name" -type f 2>/dev/null | sort || true)
		for f in $(comm -13 <(echo "$before") <(echo "$after")); do
			echo "--- crasher $f"
			cat "$f"
		done
		echo "FAIL: $dir $name"
		exit 1
	fi
done
echo "fuzz: $count targets passed in $(( SECONDS - start ))s"
