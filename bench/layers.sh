#!/usr/bin/env bash
# Issue 3 item 1: lookup cost by the depth of the layer stack. Not a test: it prints a
# table and appends a section "Lookup cost by depth" to bench/RESULTS.md (unless
# NO_RESULTS=1).
#
# For each depth N it builds N tiny layers as plain directories; directory d/ exists in
# every layer and holds M files spread over the layers (file i lives in layer i mod N, so
# every layer has its share). It then times one `stat` process statting the M names
# d/f0..d/f{M-1} plus M missing names d/nope*, cold (page cache dropped and a fresh mount)
# and warm (the same again on that mount), as medians of RUNS runs, for
#   - stacko-overlay with its merged lower-directory index (the default),
#   - stacko-overlay with the index off (-o lower_index=0: every lookup walks the layers,
#     the behaviour before the index),
#   - kernel overlayfs (only up to 500 layers, its limit).
#
#   bash bench/layers.sh                      # N = 1 100 1000, M = 1000, 3 runs
#   DEPTHS="1 10" M=200 RUNS=1 bash bench/layers.sh
#
# Run as root (drop_caches, mount).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
OVL=${STACKO_OVERLAY:-${CARGO_TARGET_DIR:-$top/target}/release/stacko-overlay}
WORK=${BENCH_DIR:-/var/tmp/stacko-layers}
DEPTHS=${DEPTHS:-1 100 1000}
M=${M:-1000}
RUNS=${RUNS:-3}
[ -x "$OVL" ] || { echo "build first: cargo build --release -p stacko-fusefs ($OVL missing)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
mkdir -p "$WORK"

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# make_layers N: $WORK/N/l0..l{N-1}, each with d/ and its share of d/f*
make_layers() {
    local n=$1 base=$WORK/$1
    [ -f "$base/.done-$M" ] && return
    rm -rf "$base"; mkdir -p "$base"
    python3 - "$base" "$n" "$M" <<'EOF'
import os, sys
base, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for l in range(n):
    os.makedirs(f"{base}/l{l}/d", exist_ok=True)
for i in range(m):
    with open(f"{base}/l{i % n}/d/f{i}", "w") as f:
        f.write(str(i))
EOF
    printf '%s\n' "$(for i in $(seq 0 $((M - 1))); do echo "d/f$i"; done)" > "$base/names"
    for i in $(seq 0 $((M - 1))); do echo "d/nope$i"; done >> "$base/names"
    touch "$base/.done-$M"
}

lowerdir() { local n=$1; seq -s: -f 'l%g' 0 $((n - 1)); }

# mount_engine ENGINE N MNT: every engine over the N layers plus a fresh, empty upper
# (an instance as users mount it; kernel overlayfs also needs one to mount a single layer)
mount_engine() {
    local eng=$1 n=$2 mnt=$3 base=$WORK/$2
    rm -rf "$base/u" "$base/w"; mkdir -p "$base/u" "$base/w"
    local o="lowerdir=$(lowerdir "$n"),upperdir=u,workdir=w"
    case $eng in
        stacko) (cd "$base" && "$OVL" -o "$o" "$mnt") ;;
        stacko-noindex) (cd "$base" && "$OVL" -o "$o,lower_index=0" "$mnt") ;;
        kernel) (cd "$base" && mount -t overlay overlay -o "$o" "$mnt") ;;
    esac
}

# time_stat MNT NAMESFILE -> seconds for one stat process over every name
time_stat() {
    local t0 t1
    t0=$(now)
    (cd "$1" && xargs -a "$2" stat -c %i >/dev/null 2>&1 || true)
    t1=$(now)
    echo "$t1 - $t0" | bc
}

declare -A COLD WARM
for n in $DEPTHS; do
    echo "depth $n: building layers" >&2
    make_layers "$n"
    engines="stacko stacko-noindex"
    [ "$n" -le 500 ] && engines="$engines kernel"
    for eng in $engines; do
        mnt=$WORK/mnt; mkdir -p "$mnt"
        cs=(); ws=()
        for _ in $(seq "$RUNS"); do
            cold
            mount_engine "$eng" "$n" "$mnt"
            cs+=("$(time_stat "$mnt" "$WORK/$n/names")")
            ws+=("$(time_stat "$mnt" "$WORK/$n/names")")
            umount "$mnt"
        done
        COLD[$eng,$n]=$(printf '%s\n' "${cs[@]}" | median)
        WARM[$eng,$n]=$(printf '%s\n' "${ws[@]}" | median)
        echo "  $eng: cold ${COLD[$eng,$n]} s, warm ${WARM[$eng,$n]} s" >&2
    done
done

us_per() { [ -n "${1:-}" ] && echo "scale=1; $1 * 1000000 / (2 * $M)" | bc || echo "-"; }
table() {
    echo "| layers | engine | cold total (s) | cold per name (µs) | warm total (s) | warm per name (µs) |"
    echo "|---:|---|---:|---:|---:|---:|"
    for n in $DEPTHS; do
        for eng in stacko stacko-noindex kernel; do
            [ -n "${COLD[$eng,$n]:-}" ] || continue
            echo "| $n | $eng | ${COLD[$eng,$n]} | $(us_per "${COLD[$eng,$n]}") | ${WARM[$eng,$n]} | $(us_per "${WARM[$eng,$n]}") |"
        done
    done
}
out=$(table)
echo "$out"
if [ "${NO_RESULTS:-0}" != 1 ]; then
    {
        echo
        echo "## Lookup cost by depth"
        echo
        echo "bench/layers.sh, $(date -u +%F), $(nproc) cores, kernel $(uname -r); M=$M names found + $M missing"
        echo "in d/ (present in every layer), one \`stat\` process over all $((2 * M)) names; medians of $RUNS runs;"
        echo "cold = page cache dropped and a fresh mount; warm = the same names again on that mount."
        echo "Every engine mounts the layers with a fresh empty upper directory."
        echo "stacko-noindex = \`-o lower_index=0\` (every lookup walks the layers: the behaviour before the index)."
        echo "Kernel overlayfs refuses more than 500 layers."
        echo
        echo "$out"
    } >> "$here/RESULTS.md"
fi
