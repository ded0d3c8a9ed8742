#!/usr/bin/env bash
# Issue 2 benchmark: ingest speed, dedup growth and import memory, side by
# side with `cp -a` of the same data in the same run. Not a test: it prints
# figures and appends a section to bench/RESULTS.md (unless NO_RESULTS=1).
#
#   bash bench/ingest.sh            # 100,000 files + one 2 GiB file, 3 runs each
#   N=20000 BIG_MIB=256 bash bench/ingest.sh   # a quicker look
#
# Run as root (it drops the page cache between runs so every run starts cold).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
STACKO=${STACKO:-$top/target/release/stacko}
WORK=${BENCH_DIR:-/var/tmp/stacko-bench}
N=${N:-100000}
BIG_MIB=${BIG_MIB:-2048}
RUNS=${RUNS:-3}
[ -x "$STACKO" ] || { echo "build first: cargo build --release ($STACKO missing)" >&2; exit 1; }
mkdir -p "$WORK"

tree_a=$WORK/tree-$N
tree_b=$WORK/tree-$N-5pct
big=$WORK/big-$BIG_MIB   # a directory holding one file of BIG_MIB MiB
[ -d "$tree_a" ] || { echo "generating $tree_a"; python3 "$here/gen_tree.py" tree "$tree_a.tmp" "$N" 1 && mv "$tree_a.tmp" "$tree_a"; }
[ -d "$tree_b" ] || { echo "generating $tree_b"; cp -a "$tree_a" "$tree_b.tmp" && python3 "$here/gen_tree.py" mutate "$tree_b.tmp" 5 2 && mv "$tree_b.tmp" "$tree_b"; }
[ -d "$big" ] || { echo "generating $big"; mkdir -p "$big.tmp"; python3 "$here/gen_tree.py" big "$big.tmp/big.bin" "$BIG_MIB"; mv "$big.tmp" "$big"; }

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
daemon_pid() { pgrep -f -- "--home $1 daemon" | head -1; }
du_bytes() { du -sb "$@" | awk '{ n += $1 } END { print n }'; }
# The store's bytes: the sled database and the object directory.
store_bytes() { du_bytes "$1/db" "$1/objects"; }
stop_daemon() {
    "$STACKO" --home "$1" daemon-stop >/dev/null 2>&1 || true
    while [ -n "$(daemon_pid "$1")" ]; do sleep 0.1; done
}

# time_cp SRC -> "seconds_cp seconds_cp_and_sync"
time_cp() {
    local dst=$WORK/cp-dst
    rm -rf "$dst"; cold
    local t0 t1 t2
    t0=$(now); cp -a "$1" "$dst"; t1=$(now); sync; t2=$(now)
    rm -rf "$dst"
    echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t0" | bc)"
}

# time_import SRC -> "seconds peak_rss_kib"
time_import() {
    local home=$WORK/home
    stop_daemon "$home"
    rm -rf "$home"; mkdir -p "$home"
    "$STACKO" --home "$home" list-images >/dev/null   # starts the daemon
    local pid; pid=$(daemon_pid "$home")
    cold
    local t0 t1
    t0=$(now); "$STACKO" --home "$home" import-image a "$1" >/dev/null; t1=$(now)
    local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    echo "$(echo "$t1 - $t0" | bc) $rss"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A R
for what in tree big; do
    src=$tree_a; [ "$what" = big ] && src=$big
    cps=(); cpss=(); ims=(); rss=()
    for ((i = 1; i <= RUNS; i++)); do
        read -r c cs < <(time_cp "$src"); cps+=("$c"); cpss+=("$cs")
        read -r s r < <(time_import "$src"); ims+=("$s"); rss+=("$r")
        echo "$what run $i: cp -a ${c}s (with sync ${cs}s), stacko import ${s}s, daemon peak RSS ${r} KiB"
    done
    R[$what.cp]=$(printf '%s\n' "${cps[@]}" | median)
    R[$what.cps]=$(printf '%s\n' "${cpss[@]}" | median)
    R[$what.im]=$(printf '%s\n' "${ims[@]}" | median)
    R[$what.rss]=$(printf '%s\n' "${rss[@]}" | sort -g | tail -1)
done

# Dedup growth: import A, measure, import B (5% of files changed), measure.
home=$WORK/home
stop_daemon "$home"
rm -rf "$home"; mkdir -p "$home"
"$STACKO" --home "$home" import-image a "$tree_a" >/dev/null
stop_daemon "$home"
s1=$(store_bytes "$home"); o1=$(du_bytes "$home/objects")
"$STACKO" --home "$home" import-image b "$tree_b" >/dev/null
stop_daemon "$home"
s2=$(store_bytes "$home"); o2=$(du_bytes "$home/objects")
tree_bytes=$(du_bytes "$tree_a")
growth=$(echo "scale=4; ($s2 - $s1) / $tree_bytes" | bc)
ogrowth=$(echo "scale=4; ($o2 - $o1) / $tree_bytes" | bc)

ratio() { echo "scale=2; $1 / $2" | bc; }
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
report=$(cat <<REPORT
### Ingest ($(date -u +%Y-%m-%d), $(nproc) cores, $N files of $(numfmt --to=iec "$tree_bytes") and one $BIG_MIB MiB file, median of $RUNS cold runs; load average $load_start at start, $load_end at end)

| workload | cp -a | cp -a + sync | stacko import | import / cp -a | import / (cp -a + sync) | daemon peak RSS |
|---|---|---|---|---|---|---|
| $N-file tree | ${R[tree.cp]} s | ${R[tree.cps]} s | ${R[tree.im]} s | $(ratio "${R[tree.im]}" "${R[tree.cp]}") | $(ratio "${R[tree.im]}" "${R[tree.cps]}") | $((${R[tree.rss]} / 1024)) MiB |
| $BIG_MIB MiB file | ${R[big.cp]} s | ${R[big.cps]} s | ${R[big.im]} s | $(ratio "${R[big.im]}" "${R[big.cp]}") | $(ratio "${R[big.im]}" "${R[big.cps]}") | $((${R[big.rss]} / 1024)) MiB |

Second import of the tree with 5% of its files changed: the store grew by $(numfmt --to=iec "$((s2 - s1))") ($growth of the tree's bytes; objects alone $(numfmt --to=iec "$((o2 - o1))"), $ogrowth).
Store after both imports: $(numfmt --to=iec "$s2") (objects $(numfmt --to=iec "$o2"), sled $(numfmt --to=iec "$((s2 - o2))")).
REPORT
)
echo "$report"
[ "${NO_RESULTS:-0}" = 1 ] || printf '\n%s\n' "$report" >> "$here/RESULTS.md"
