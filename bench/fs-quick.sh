#!/usr/bin/env bash
# Quick A/B timing of stacko-overlay vs kernel overlayfs over bench/fs.sh's data
# (generate it first: GEN_ONLY=1 bash bench/fs.sh). Engines alternate within
# each repetition; each measurement is on a fresh mount + upper with caches
# dropped. Prints per-run times and medians with the stacko/kernel ratio.
#   bash bench/fs-quick.sh [workload...]   (find stat small untar rm chmod)
# Env: RUNS (5), SOVL (stacko-overlay binary), BASE_SOVL (optional second binary,
# e.g. the build before a change, run as engine "base"), DATA (data dir), STATS=1 writes
# a request count per stacko run to $RUN/stats-<workload>.
# Not a test: timings only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SOVL=${SOVL:-${STACKO_OVERLAY:-$(dirname "$here")/target/release/stacko-overlay}}
RUNS=${RUNS:-5}
DATA=${DATA:-/var/tmp/stacko-bench/fs-data-100000-2048-10000-20000-512}
RUN=${RUN_DIR:-/var/tmp/stacko-bench/quick-run}
LA=$DATA/lower-top LB=$DATA/lower-base TARF=$DATA/extract.tar
M=$RUN/mnt
WL=${*:-find stat small untar rm chmod}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -d "$DATA/done" ] || { echo "no data at $DATA" >&2; exit 1; }
mkdir -p "$RUN"
PID=""
up() { # engine workload
    rm -rf "$RUN/upper" "$RUN/work"; mkdir -p "$RUN/upper" "$RUN/work" "$M"
    local o="lowerdir=$LA:$LB,upperdir=$RUN/upper,workdir=$RUN/work"
    if [ "$1" = kernel ]; then mount -t overlay overlay -o "$o,userxattr" "$M"
    else
        local env=(); [ "${STATS:-0}" = 1 ] && env=(STACKO_OVERLAY_STATS="$RUN/stats-$2")
        local bin=$SOVL; [ "$1" = base ] && bin=$BASE_SOVL
        env "${env[@]}" "$bin" -f -o "$o" "$M" 2>"$RUN/log" & PID=$!
        for _ in $(seq 200); do awk -v m="$M" '$2==m{f=1}END{exit !f}' /proc/mounts && break; sleep 0.05; done
    fi
    sync; echo 3 > /proc/sys/vm/drop_caches
}
down() { # idempotent: also run by the EXIT trap, when nothing may be mounted
    if mountpoint -q "$M"; then umount "$M" 2>/dev/null || umount -l "$M"; fi
    if [ -n "$PID" ]; then wait "$PID" 2>/dev/null || true; PID=""; fi
}
trap 'down 2>/dev/null; true' EXIT
w_find()  { find "$M" | wc -l >/dev/null; }
w_stat()  { find "$M" -printf '%s %m %u\n' > /dev/null; }
w_small() { find "$M" -type f -size -64k -print0 | xargs -0 cat > /dev/null; }
w_untar() { tar -xf "$TARF" -C "$M" && sync; }
w_rm()    { rm -rf "$M/sub"; }
w_chmod() { chmod -R g+w "$M/sub"; }
declare -A T
for w in $WL; do
    for r in $(seq "$RUNS"); do
        for e in kernel stacko ${BASE_SOVL:+base}; do
            up "$e" "$w"
            s=$EPOCHREALTIME; "w_$w"; t=$(awk "BEGIN{printf \"%.3f\", $EPOCHREALTIME - $s}")
            down
            T[$w|$e]="${T[$w|$e]:-} $t"
        done
    done
    mk=$(tr ' ' '\n' <<<"${T[$w|kernel]}" | grep . | sort -g | awk '{a[NR]=$1}END{print a[int((NR+1)/2)]}')
    ms=$(tr ' ' '\n' <<<"${T[$w|stacko]}" | grep . | sort -g | awk '{a[NR]=$1}END{print a[int((NR+1)/2)]}')
    printf '%-6s kernel %s | stacko %s | median %s / %s = %sx\n' "$w" "${T[$w|kernel]}" "${T[$w|stacko]}" "$ms" "$mk" \
        "$(awk "BEGIN{printf \"%.2f\", $ms / $mk}")"
    if [ -n "${BASE_SOVL:-}" ]; then
        mb=$(tr ' ' '\n' <<<"${T[$w|base]}" | grep . | sort -g | awk '{a[NR]=$1}END{print a[int((NR+1)/2)]}')
        printf '%-6s base   %s | median %s / %s = %sx\n' "$w" "${T[$w|base]}" "$mb" "$mk" "$(awk "BEGIN{printf \"%.2f\", $mb / $mk}")"
    fi
done
