#!/bin/bash
# Linker wrapper for the release build (`make build` passes it to rustc with
# -C linker): links the `ironcell` binary with the functions a run executes
# placed first, so that they share a few hundred KiB of pages instead of
# being spread over all 3.3 MiB of text (see bench/README.md, "Memory").
#
# crates/cli/link-order.txt lists those functions by demangled name without
# hashes (scripts/profile-link-order.py records it). Mangled names carry
# per-build hashes, so this script maps the list onto the symbols of the
# objects being linked, writes an lld --symbol-ordering-file and runs the
# real link. Anything else (build scripts, other binaries, an empty map,
# IRONCELL_LINK_ORDER=off) is linked unchanged. An ordering never changes
# what the program does, only where its functions lie.
set -u
CC=cc
here=$(cd "$(dirname "$0")" && pwd)
list="$here/../crates/cli/link-order.txt"

out="" prev=""
for a in "$@"; do
    [ "$prev" = "-o" ] && out=$a
    prev=$a
done
case "$(basename -- "$out")" in
ironcell-*) ;;
*) exec "$CC" "$@" ;;
esac
if [ "${IRONCELL_LINK_ORDER:-on}" = off ] || [ ! -f "$list" ]; then
    exec "$CC" "$@"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
objs=()
for a in "$@"; do
    case "$a" in
    *.o | *.rlib) [ -f "$a" ] && objs+=("$a") ;;
    esac
done

# Rust symbols of the inputs: mangled name, and the same demangled without
# hashes (as profile-link-order.py's strip_hashes).
nm --defined-only --format=just-symbols "${objs[@]}" 2>/dev/null |
    grep -E '^_(R|ZN)' | sort -u >"$tmp/mangled"
c++filt <"$tmp/mangled" | sed -E 's/\[[0-9a-f]+\]//g; s/::h[0-9a-f]{16}$//' >"$tmp/plain"
paste -d '\t' "$tmp/plain" "$tmp/mangled" >"$tmp/map"

# The ordering: for each listed name in order, every symbol it names; a C
# name (glibc, libseccomp, linked from system archives this script does not
# read) is passed as it is, and lld skips those absent from the link.
awk -F '\t' '
    NR == FNR { sym[$1] = sym[$1] ? sym[$1] "\n" $2 : $2; next }
    /^#/ || $0 == "" { next }
    /^[A-Za-z_.][A-Za-z0-9_.]*$/ { print; c++; next }
    { total++ }
    $0 in sym { print sym[$0]; found++ }
    END { printf "%d %d %d\n", found, total, c > "/dev/stderr" }
' "$tmp/map" "$list" >"$tmp/order" 2>"$tmp/count"
read -r found total c_names <"$tmp/count"
# rustc hides a linker's messages when the link succeeds: the summary goes
# to a file beside the release directory, which `make build` prints.
msg="link order: ${found:-0} of ${total:-0} Rust functions of crates/cli/link-order.txt found in this build and placed first, with ${c_names:-0} C functions"
if [ "$((${found:-0} * 2))" -lt "${total:-0}" ]; then
    msg="$msg; WARNING: the list is stale, re-record it with 'make link-order'"
fi
echo "$msg" | tee "$(dirname -- "$out")/../link-order.report" >&2
if [ "$((${found:-0} + ${c_names:-0}))" -eq 0 ]; then
    exec "$CC" "$@"
fi
"$CC" "$@" -Wl,--symbol-ordering-file="$tmp/order" -Wl,--no-warn-symbol-ordering
