#!/usr/bin/env bash
# The FUSE floor of bench/fs-quick.sh's workloads.
#
# For each workload, stacko-overlay counts the requests the kernel sends it
# (STACKO_OVERLAY_STATS). Left out are those the kernel does not wait for: FORGET,
# and RELEASE/RELEASEDIR (sent in the background on the last close of a file).
# The workloads are sequential (one process, one system call at a time), so the
# kernel waits for each of those requests in turn: no FUSE server, however little it
# does per request, can finish the workload in less than
#     requests x (round trip of a request that does nothing).
# That round trip is measured here on the same machine: getxattr(2) of a missing name
# on a file in the mount (one request, one getxattr in the server) minus the same call
# on the upper file directly (ext4). The floor is compared with kernel overlayfs's time
# from the same fs-quick.sh run and with the issue's target.
#
#   bash bench/floor.sh [workload...]   (find stat small untar rm chmod)
# Env: RUNS (3), as fs-quick.sh (SOVL, DATA, RUN_DIR); REUSE=1 takes the times and counts
# of the previous run instead of measuring them again. Needs the data of bench/fs.sh
# (GEN_ONLY=1 bash bench/fs.sh). Prints a markdown table. Not a test: timings only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SOVL=${SOVL:-${STACKO_OVERLAY:-$(dirname "$here")/target/release/stacko-overlay}}
RUN=${RUN_DIR:-/var/tmp/stacko-bench/quick-run}
WL=${*:-find stat small untar rm chmod}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 1; }
mkdir -p "$RUN"

# 1. times and request counts
quick=$RUN/floor-quick.txt
if [ "${REUSE:-0}" != 1 ]; then
    STATS=1 RUNS=${RUNS:-3} SOVL=$SOVL RUN_DIR=$RUN bash "$here/fs-quick.sh" $WL >"$quick" || true
    cat "$quick" >&2
fi
for w in $WL; do
    grep -qE "^$w +kernel" "$quick" && [ -s "$RUN/stats-$w" ] ||
        { echo "floor.sh: no time or request count for $w (fs-quick.sh failed?)" >&2; exit 1; }
done

# 2. round trip of a request that does nothing
P=$RUN/rtt
umount "$P/mnt" 2>/dev/null || true
rm -rf "$P"; mkdir -p "$P/lower" "$P/upper" "$P/work" "$P/mnt"
"$SOVL" -o "lowerdir=$P/lower,upperdir=$P/upper,workdir=$P/work" "$P/mnt"
trap 'umount "$P/mnt" 2>/dev/null || true' EXIT
: > "$P/mnt/probe"
rtt_us=$(python3 - "$P/mnt/probe" "$P/upper/probe" <<'EOF'
import os, sys, time
def per_call(path, n=50000):
    best = None
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            try:
                os.getxattr(path, "user.stacko-none")
            except OSError:
                pass
        d = (time.perf_counter() - t) / n
        best = d if best is None else min(best, d)
    return best
print("%.2f" % ((per_call(sys.argv[1]) - per_call(sys.argv[2])) * 1e6))
EOF
)
umount "$P/mnt"
trap - EXIT

# 3. the table
target() {
    case $1 in
    find) echo "2" ;; stat) echo "1.5" ;; small) echo "1.3" ;; untar | rm) echo "2" ;;
    chmod) echo "abs0.5" ;; *) echo "" ;;
    esac
}
echo
echo "Null request round trip: $rtt_us µs (getxattr of a missing name through stacko-overlay, minus the same call on ext4). Load average $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| workload | requests waited for | floor = requests × round trip | kernel overlayfs | stacko-overlay | target | floor / kernel | verdict |"
echo "|---|---:|---:|---:|---:|---|---:|---|"
for w in $WL; do
    line=$(grep -E "^$w +kernel" "$quick" | tail -1)
    mk=$(sed -E 's/.*median ([0-9.]+) \/ ([0-9.]+) =.*/\2/' <<<"$line")
    ms=$(sed -E 's/.*median ([0-9.]+) \/ ([0-9.]+) =.*/\1/' <<<"$line")
    req=$(awk '$1 != "forget" && $1 != "release" && $1 != "releasedir" {s += $2} END {print s + 0}' "$RUN/stats-$w")
    floor=$(awk -v r="$req" -v t="$rtt_us" 'BEGIN{printf "%.3f", r * t / 1e6}')
    fk=$(awk -v f="$floor" -v k="$mk" 'BEGIN{printf "%.2f", f / k}')
    t=$(target "$w")
    case $t in
    abs*)
        lim=${t#abs}; tt="≤ $lim s"
        verdict=$(awk -v f="$floor" -v l="$lim" 'BEGIN{print (f > l) ? "floor above the target: unreachable over FUSE" : "reachable in principle"}') ;;
    "") tt="-"; verdict="-" ;;
    *)
        tt="≤ ${t}× kernel"
        verdict=$(awk -v r="$fk" -v l="$t" 'BEGIN{print (r > l) ? "floor above the target: unreachable over FUSE" : "reachable in principle"}') ;;
    esac
    echo "| $w | $req | $floor s | $mk s | $ms s | $tt | $fk | $verdict |"
done
