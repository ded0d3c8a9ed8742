#!/usr/bin/env bash
# Issue 4 benchmark: wall time of the stackpoint commands, with a small (~10 MB)
# image and a large (100,000-file) image, and the kernel-path mount of a
# 50-layer image (first mount, which checks the layers out, and later mounts).
# Not a test: it prints tables and appends them to bench/RESULTS.md (unless
# NO_RESULTS=1).
#
#   bash bench/stackpoint.sh        # full: 11 timed cycles per size and backend
#   LARGE_FILES=10000 ITER=3 DEEP_LAYERS=10 DEEP_CHAINS=1 LATER=3 NO_RESULTS=1 bash bench/stackpoint.sh
#
# One cycle, on a new stackpoint each time, every command timed as the user
# runs it (a CLI process talking to the running daemon):
#   new-stackpoint SP A --dir D; mount-stackpoint SP --backend B;
#   cutover-stackpoint SP A2 (A2 = a small image on top of A); fallback-stackpoint SP;
#   umount-stackpoint SP; delete-stackpoint SP
# for B in BACKENDS (default "kernel fuse"). A first cycle per size and backend
# is not counted (it makes the kernel checkouts). The daemon stays up; caches
# are warm. Deep: DEEP_CHAINS separate chains of DEEP_LAYERS images (DEEP_FILES
# files each); per chain one first mount after dropping caches, then LATER
# mounts. Run as root.
set -euo pipefail
umask 022
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
STACKO=${STACKO:-$top/target/release/stacko}
SMALL_FILES=${SMALL_FILES:-680}       # ~15 KiB each on average: ~10 MB
LARGE_FILES=${LARGE_FILES:-100000}
ITER=${ITER:-11}
BACKENDS=${BACKENDS:-kernel fuse}
DEEP_LAYERS=${DEEP_LAYERS:-50}
DEEP_FILES=${DEEP_FILES:-1000}
DEEP_CHAINS=${DEEP_CHAINS:-3}
LATER=${LATER:-11}
BASE=${BENCH_DIR:-/var/tmp/stacko-bench}
DATA=$BASE/sp-data-$SMALL_FILES-$LARGE_FILES-$DEEP_LAYERS-$DEEP_FILES
RUN=$BASE/sp-run
H=$RUN/home

die() { echo "stackpoint.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (the kernel backend and drop_caches need it)"
[ -x "$STACKO" ] || die "build first: cargo build --release ($STACKO missing)"
missing=()
for c in import-image new-stackpoint mount-stackpoint cutover-stackpoint fallback-stackpoint umount-stackpoint delete-stackpoint is-stackpoint-mounted daemon-stop; do
    "$STACKO" "$c" --help >/dev/null 2>&1 || missing+=("$c")
done
[ ${#missing[@]} = 0 ] || die "these stacko commands do not exist yet: ${missing[*]}"
. "$here/guard.sh"
guard "$RUN" "$@"       # Ctrl-C safe: see guard.sh

# ---------------------------------------------------------------- data
if [ ! -d "$DATA/done" ]; then
    echo "generating data in $DATA"
    rm -rf "$DATA"; mkdir -p "$DATA"
    python3 "$here/gen_tree.py" tree "$DATA/small" "$SMALL_FILES" 21
    python3 "$here/gen_tree.py" tree "$DATA/large" "$LARGE_FILES" 22
    mkdir -p "$DATA/delta"; python3 "$here/gen_tree.py" tree "$DATA/delta/new" 10 23
    echo cutover > "$DATA/delta/marker"
    for ((k = 1; k <= DEEP_LAYERS; k++)); do
        python3 "$here/gen_tree.py" tree "$DATA/deep/$k" "$DEEP_FILES" $((100 + k)) $(((k - 1) * DEEP_FILES))
        echo "$k" > "$DATA/deep/$k/layer-$k"
    done
    mkdir "$DATA/done"
fi

# ---------------------------------------------------------------- helpers
calc() { awk "BEGIN { printf \"%.${2:-3}f\", ($1) }"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
S() { "$STACKO" --home "$H" "$@"; }
LAST=0
tm() { # tm CMD...: runs CMD (output to the log), LAST = wall seconds; dies if it fails
    local s e
    s=$EPOCHREALTIME
    "$@" >>"$RUN/log" 2>&1 || { echo "---- $RUN/log:" >&2; tail -5 "$RUN/log" >&2; die "failed: ${*}"; }
    e=$EPOCHREALTIME
    LAST=$(calc "$e - $s" 4)
}
declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
med() { local v=${R[$1]:-}; [ -n "$v" ] && printf '%s\n' $v | median; }
check() { "$@" || die "wrong state: $*"; }

cleanup() {
    set +e
    trap - EXIT INT TERM
    local m
    for m in $(awk -v r="$RUN" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    [ -d "$H" ] && S daemon-stop >/dev/null 2>&1
    true
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$EPOCHREALTIME
if [ -d "$RUN" ]; then
    for m in $(awk -v r="$RUN" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m"; done
    rm -rf "$RUN"
fi
mkdir -p "$RUN/mnt"

echo "importing images"
s=$EPOCHREALTIME
tm S import-image small "$DATA/small"
pgrep -f -- "--home $H daemon" >> "$RUN/servers" || true
tm S import-image small2 "$DATA/delta" --parent small
tm S import-image large "$DATA/large"
tm S import-image large2 "$DATA/delta" --parent large
echo "  took $(calc "$EPOCHREALTIME - $s" 1) s"
small_bytes=$(du -sb "$DATA/small" | cut -f1)
large_bytes=$(du -sb "$DATA/large" | cut -f1)

# cycle SIZE BACKEND I COUNT: one stackpoint's life, timed command by command
cycle() {
    local size=$1 b=$2 i=$3 count=$4 sp="sp-$1-$2-$3" d="$RUN/mnt/sp-$1-$2-$3"
    tm S new-stackpoint "$sp" "$size" --dir "$d";          [ "$count" = 1 ] && add "new|$size|$b" "$LAST"
    tm S mount-stackpoint "$sp" --backend "$b";             [ "$count" = 1 ] && add "mount|$size|$b" "$LAST"
    check S is-stackpoint-mounted "$sp"; check test -d "$d/d00"; check test ! -e "$d/marker"
    tm S cutover-stackpoint "$sp" "${size}2";               [ "$count" = 1 ] && add "cutover|$size|$b" "$LAST"
    check test -f "$d/marker"; check test -d "$d/d00"
    tm S fallback-stackpoint "$sp";                         [ "$count" = 1 ] && add "fallback|$size|$b" "$LAST"
    check test ! -e "$d/marker"; check test -d "$d/d00"
    tm S umount-stackpoint "$sp";                           [ "$count" = 1 ] && add "umount|$size|$b" "$LAST"
    if S is-stackpoint-mounted "$sp" >/dev/null 2>&1; then die "$sp still mounted after umount-stackpoint"; fi
    tm S delete-stackpoint "$sp";                           [ "$count" = 1 ] && add "delete|$size|$b" "$LAST"
    true
}

read -r -a BK <<< "$BACKENDS"
for b in "${BK[@]}"; do
    for size in small large; do cycle "$size" "$b" 0 0; done     # warm-up: checkouts, daemon
done
for ((i = 1; i <= ITER; i++)); do
    for b in "${BK[@]}"; do
        for size in small large; do cycle "$size" "$b" "$i" 1; done
    done
    echo "cycle $i done"
done

# ---------------------------------------------------------------- 50 layers
echo "importing $DEEP_CHAINS chain(s) of $DEEP_LAYERS images"
s=$EPOCHREALTIME
for ((c = 1; c <= DEEP_CHAINS; c++)); do
    parent=()
    for ((k = 1; k <= DEEP_LAYERS; k++)); do
        tm S import-image "deep$c-$k" "$DATA/deep/$k" "${parent[@]}"
        parent=(--parent "deep$c-$k")
    done
done
import_deep=$(calc "$EPOCHREALTIME - $s" 1)
echo "  took $import_deep s"
for ((c = 1; c <= DEEP_CHAINS; c++)); do
    sp=deep$c; d=$RUN/mnt/$sp
    tm S new-stackpoint "$sp" "deep$c-$DEEP_LAYERS" --dir "$d"
    cold
    tm S mount-stackpoint "$sp" --backend kernel; add deep_first "$LAST"
    check test -f "$d/layer-1"; check test -f "$d/layer-$DEEP_LAYERS"
    awk -v m="$d" '$2 == m && $3 == "overlay" {f=1} END {exit !f}' /proc/mounts || die "$sp is not a kernel overlay mount"
    tm S umount-stackpoint "$sp"; add deep_umount "$LAST"
    for ((j = 1; j <= LATER; j++)); do
        tm S mount-stackpoint "$sp" --backend kernel; add deep_later "$LAST"
        check test -f "$d/layer-1"
        tm S umount-stackpoint "$sp"; add deep_umount "$LAST"
    done
    echo "chain $c: first mount $(echo "${R[deep_first]}" | awk '{print $NF}') s"
done
deep_files=$(find "$DATA/deep" -type f | wc -l)
S daemon-stop >/dev/null 2>&1 || true
for ((i = 0; i < 100; i++)); do pgrep -f -- "--home $H daemon" >/dev/null || break; sleep 0.05; done
[ "${KEEP:-0}" = 1 ] || rm -rf "$H"   # KEEP=1 keeps the store
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
t_total=$(calc "$EPOCHREALTIME - $t_start" 0)

# ---------------------------------------------------------------- report
ms() { [ -n "$1" ] && calc "$1 * 1000" 1 || echo "—"; }
rev=$(cd "$top" && git rev-parse --short HEAD 2>/dev/null || echo "?")
dirty=$(cd "$top" && git status --porcelain -- fusefs src store cli 2>/dev/null | grep -q . && echo "+uncommitted changes" || true)
quick=""
if [ "$LARGE_FILES" -lt 100000 ] || [ "$ITER" -lt 11 ] || [ "$DEEP_LAYERS" -lt 50 ]; then
    quick=" Sizes or runs below the issue's: PASS/MISS is indicative only."
fi
report=$(
    echo "### Stackpoint commands, issue 4 ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, kernel $(uname -r))"
    echo
    echo "bench/stackpoint.sh: small image $SMALL_FILES files, $(numfmt --to=iec "$small_bytes"); large image $LARGE_FILES files, $(numfmt --to=iec "$large_bytes"); cutover goes to a 12-file image on top of the same one. Medians of $ITER cycles (each on a new stackpoint, daemon running, caches warm; a first uncounted cycle makes the checkouts). Milliseconds of wall time of the CLI command. stacko $rev$dirty. Load average at start $load_start, at end $load_end; the run took $t_total s.$quick"
    echo
    echo "| command | backend | small image | large image | large / small | target | verdict |"
    echo "|---|---|---|---|---|---|---|"
    for b in "${BK[@]}"; do
        for c in new mount cutover fallback umount delete; do
            a=$(med "$c|small|$b"); l=$(med "$c|large|$b")
            r=$(calc "$l / $a" 2)
            target="—"; v="—"
            case $c in new | mount | cutover | fallback)
                target="≤ 100 ms; ratio ≤ 1.5"; why=()
                [ "$(calc "$a <= 0.1" 0)" = 1 ] || why+=("small $(ms "$a") ms")
                [ "$(calc "$l <= 0.1" 0)" = 1 ] || why+=("large $(ms "$l") ms")
                [ "$(calc "$l <= 1.5 * $a" 0)" = 1 ] || why+=("ratio $r")
                if [ ${#why[@]} = 0 ]; then v=PASS; else v="MISS (${why[*]})"; fi ;;
            esac
            echo "| $c-stackpoint | $b | $(ms "$a") ms | $(ms "$l") ms | $r | $target | $v |"
        done
    done
    echo
    echo "Kernel-path mount of a $DEEP_LAYERS-layer image ($DEEP_FILES files a layer, $deep_files files in all; importing $DEEP_CHAINS chain(s) took $import_deep s):"
    echo
    echo "| | median | runs |"
    echo "|---|---|---|"
    echo "| first mount-stackpoint (checks out $DEEP_LAYERS layers), caches dropped | $(ms "$(med deep_first)") ms | $(echo ${R[deep_first]} | wc -w) |"
    echo "| later mount-stackpoint | $(ms "$(med deep_later)") ms | $(echo ${R[deep_later]} | wc -w) |"
    echo "| umount-stackpoint | $(ms "$(med deep_umount)") ms | $(echo ${R[deep_umount]} | wc -w) |"
    true
)
echo
echo "$report"
[ "${NO_RESULTS:-0}" = 1 ] || printf '\n%s\n' "$report" >> "$here/RESULTS.md"
