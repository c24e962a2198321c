#!/usr/bin/env bash
# Enforces the import directions of docs/ARCHITECTURE.md:
#  - binaries never import each other; pkg/ never imports a binary's folder;
#  - gin only in supernode/adminapi;
#  - anacrolix (BitTorrent) only in supernode/bt.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
mod=github.com/damselfly/damselfly
components=(supernode dfget dfdaemon registry-cache)
fail=0

while read -r pkg imports; do
	rel=${pkg#"$mod"/}
	for imp in $imports; do
		case "$imp" in "$mod"/*) ;; *) 
			case "$imp" in
			github.com/gin-gonic/gin*) [[ $rel == supernode/adminapi* ]] || { echo "$rel imports gin"; fail=1; } ;;
			github.com/anacrolix/*) [[ $rel == supernode/bt || $rel == supernode/bt/* ]] || { echo "$rel imports anacrolix"; fail=1; } ;;
			esac
			continue ;;
		esac
		target=${imp#"$mod"/}
		for c in "${components[@]}"; do
			if [[ $target == "$c" || $target == "$c"/* ]]; then
				if [[ $rel == pkg/* ]]; then echo "$rel (pkg) imports component $target"; fail=1; fi
				for o in "${components[@]}"; do
					if [[ $o != "$c" && ( $rel == "$o" || $rel == "$o"/* ) ]]; then echo "$rel imports another component: $target"; fail=1; fi
				done
			fi
		done
	done
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./... | grep -v "^$mod/hack/")

if [ "$fail" -ne 0 ]; then
	echo "import rules violated" >&2
	exit 1
fi
echo "imports ok"
