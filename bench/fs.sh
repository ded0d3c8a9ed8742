#!/usr/bin/env bash
# Issue 3 benchmark: the merged filesystem, side by side in one run with kernel
# overlayfs and fuse-overlayfs over the same two lower layers. Four engines:
#   kernel          mount -t overlay ... -o userxattr
#   fuse-overlayfs  fuse-overlayfs -o lowerdir=A:B,upperdir=U,workdir=W
#   stacko-overlay  target/release/stacko-overlay, same options, same dirs
#   stacko images   the same two layers imported as images base <- top, shown
#                   by a stackpoint mounted with --backend fuse (the daemon)
# Every workload starts from a fresh mount (new upper/work, new server process,
# for stacko images a new stackpoint and a restarted daemon) followed by
# `sync; echo 3 > drop_caches`, so "cold" means cold for the kernel and FUSE.
# "Warm" is the same command run again at once. Figures are medians of RUNS.
# Rootless: the sequential-read workloads again as user $RL_USER, mounted
# through fusermount3, for stacko-overlay and fuse-overlayfs.
# Not a test: it prints a table and appends it to bench/RESULTS.md
# (unless NO_RESULTS=1).
#
#   bash bench/fs.sh                       # full: 100,000 files, 2 GiB, 3 runs (estimated 20-25 min; not yet timed)
#   N_FILES=10000 SUB_FILES=2000 TAR_FILES=4000 BIG_MIB=256 RUNS=1 NO_RESULTS=1 bash bench/fs.sh
#
# Sizes: N_FILES small files split over both layers (the top layer shadows 1%
# of the bottom layer's files and whites out 0.5%), BIG_MIB one file in the
# bottom layer, SUB_FILES files in a subtree of the bottom layer (chmod, rm -rf,
# mv), TAR_FILES files in the tar extracted into the mount, PAR_MIB each of the
# two files read in parallel (one per layer). ENGINES picks engines (default
# "kernel fuse-overlayfs stacko-overlay stacko-images"), ROOTLESS=0 skips the
# rootless part. Data is generated once under BENCH_DIR and kept (GEN_ONLY=1:
# generate it and stop).
# Run as root: it mounts, drops caches and switches to $RL_USER.
set -euo pipefail
umask 022
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
STACKO=${STACKO:-$top/target/release/stacko}
SOVL=${STACKO_OVERLAY:-$top/target/release/stacko-overlay}
FOVL=${FUSE_OVERLAYFS:-fuse-overlayfs}
N_FILES=${N_FILES:-100000}
BIG_MIB=${BIG_MIB:-2048}
SUB_FILES=${SUB_FILES:-10000}
TAR_FILES=${TAR_FILES:-20000}
PAR_MIB=${PAR_MIB:-$((BIG_MIB / 4))}
RUNS=${RUNS:-3}
RL_USER=${RL_USER:-stackotest}
ROOTLESS=${ROOTLESS:-1}
ENGINES=${ENGINES:-kernel fuse-overlayfs stacko-overlay stacko-images}
BASE=${BENCH_DIR:-/var/tmp/stacko-bench}
DATA=$BASE/fs-data-$N_FILES-$BIG_MIB-$SUB_FILES-$TAR_FILES-$PAR_MIB
RUN=$BASE/fs-run           # mounts, uppers, the stacko home, logs: wiped each run

die() { echo "fs.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (mounts, drop_caches, setpriv)"
[ -x "$SOVL" ] || die "build first: cargo build --release -p stacko-fusefs ($SOVL missing)"
command -v "$FOVL" >/dev/null || die "$FOVL not found (apt-get install fuse-overlayfs)"
for t in perl bc setpriv fusermount3 python3 tar; do command -v $t >/dev/null || die "$t missing"; done
if [ "$ROOTLESS" = 1 ]; then id "$RL_USER" >/dev/null 2>&1 || die "user $RL_USER missing (or ROOTLESS=0)"; fi
. "$here/guard.sh"
guard "$RUN" "$@"       # Ctrl-C safe: see guard.sh

# ---------------------------------------------------------------- data
LA=$DATA/lower-top      # lowerdir=LA:LB (LA is the top layer)
LB=$DATA/lower-base
TARF=$DATA/extract.tar
if [ ! -d "$DATA/done" ]; then
    echo "generating data in $DATA"
    rm -rf "$DATA"; mkdir -p "$LA" "$LB"
    half=$((N_FILES / 2))
    python3 "$here/gen_tree.py" tree "$LB" "$half" 10 0
    python3 "$here/gen_tree.py" tree "$LA" "$((N_FILES - half))" 11 "$half"
    # the top layer shadows 1% of the bottom's files and whites out 0.5%
    ( cd "$LB" && find d* -type f | sort ) > "$DATA/base-files"
    awk 'NR % 100 == 1' "$DATA/base-files" | while read -r f; do
        head -c 3000 /dev/urandom > "$LA/$f"; done
    awk 'NR % 200 == 2' "$DATA/base-files" | while read -r f; do mknod "$LA/$f" c 0 0; done
    python3 "$here/gen_tree.py" flat "$LB/sub" "$SUB_FILES" 100 13
    python3 "$here/gen_tree.py" big "$LB/big.bin" "$BIG_MIB"
    python3 "$here/gen_tree.py" big "$LB/par1.bin" "$PAR_MIB"
    python3 "$here/gen_tree.py" big "$LA/par2.bin" "$PAR_MIB"
    python3 "$here/gen_tree.py" tree "$DATA/untar" "$TAR_FILES" 12
    tar -cf "$TARF" -C "$DATA" untar
    rm -rf "$DATA/untar" "$DATA/base-files"
    mkdir "$DATA/done"
fi
chmod 755 "$BASE" "$DATA"
[ "${GEN_ONLY:-0}" = 1 ] && { echo "data ready in $DATA"; exit 0; }

# ---------------------------------------------------------------- helpers
now() { echo "$EPOCHREALTIME"; }
calc() { awk "BEGIN { printf \"%.${2:-3}f\", ($1) }"; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
declare -A R        # R[workload|engine] = space-separated values
declare -A NOTE     # NOTE[workload|engine] = text (EXDEV, errors, wrong results)
add() { R[$1|$2]="${R[$1|$2]:-} $3"; }
problems=()
problem() { problems+=("$*"); echo "!! $*" >&2; }

LAST=0
# tm CMD... : runs CMD, sets LAST to its wall time in seconds; returns its status
tm() {
    local s e rc=0
    s=$EPOCHREALTIME; "$@" || rc=$?; e=$EPOCHREALTIME
    LAST=$(calc "$e - $s")
    return $rc
}

as_user() { setpriv --reuid="$RL_USER" --regid="$RL_USER" --clear-groups -- "$@"; }

SRV_PID=""          # the FUSE server of the current mount (RSS is read from it)
SERVERS=()          # every server started, for cleanup
SI_OK=0             # stacko images usable
SIH=$RUN/stacko-home
M=$RUN/mnt
SI_SKIP_REASON=""

cleanup() {
    set +e
    trap - EXIT INT TERM
    if [ -x "$STACKO" ] && [ -d "$SIH" ]; then
        "$STACKO" --home "$SIH" umount-stackpoint --lazy bench >/dev/null 2>&1
        "$STACKO" --home "$SIH" daemon-stop >/dev/null 2>&1
    fi
    local m
    for m in $(awk -v r="$RUN" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    # only pids still running one of our servers (a pid may have been reused)
    ours() { tr '\0' ' ' 2>/dev/null < "/proc/$1/cmdline" | grep -qF -- "$RUN"; }
    local p
    for p in "${SERVERS[@]}"; do ours "$p" && kill "$p" 2>/dev/null; done
    sleep 0.2
    for p in "${SERVERS[@]}"; do ours "$p" && kill -9 "$p" 2>/dev/null; done
    p=$(daemon_pid); [ -n "$p" ] && kill "$p" 2>/dev/null
    true
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

mounted() { awk -v m="$1" '$2 == m {f=1} END {exit !f}' /proc/mounts; }

# wait_mount ENGINE [PID]: the mount is up and shows the merged view, or die
wait_mount() {
    local i
    for ((i = 0; i < 200; i++)); do
        if mounted "$M" && [ -n "$(ls -A "$M" 2>/dev/null || as_user ls -A "$M" 2>/dev/null)" ]; then return 0; fi
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "---- $RUN/logs/$1.log:" >&2; tail -20 "$RUN/logs/$1.log" >&2 || true
    die "mount of $1 at $M failed"
}

# unmount whatever is at $M and wait for its server to exit (fuser unmounts by
# path when its session ends, which could hit the next mount at the same path)
CUR=""              # engine mounted at $M
unmount_all() {
    if [ "$CUR" = stacko-images ]; then
        # the daemon is stopped too, so that the next mount starts cold
        "$STACKO" --home "$SIH" umount-stackpoint bench >/dev/null || die "umount-stackpoint failed"
        "$STACKO" --home "$SIH" daemon-stop >/dev/null 2>&1 || true
    fi
    CUR=""
    if mounted "$M"; then umount "$M" || die "umount $M failed"; fi
    if [ -n "$SRV_PID" ]; then
        local i
        for ((i = 0; i < 100; i++)); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.05; done
        kill -0 "$SRV_PID" 2>/dev/null && { kill "$SRV_PID"; sleep 0.2; }
        SRV_PID=""
    fi
}

daemon_pid() { pgrep -f -- "--home $SIH daemon" | head -1; }

# fresh ENGINE [rootless]: a new mount of ENGINE at $M over a new upper, then
# caches dropped. Sets SRV_PID.
fresh() {
    local e=$1 rl=${2:-}
    unmount_all
    rm -rf "$RUN/upper" "$RUN/work"
    mkdir -p "$RUN/upper" "$RUN/work" "$M"
    local opts="lowerdir=$LA:$LB,upperdir=$RUN/upper,workdir=$RUN/work"
    local log=$RUN/logs/$e${rl:+-rootless}.log
    if [ -n "$rl" ]; then
        chown "$RL_USER:" "$RUN/upper" "$RUN/work" "$M"
    else
        chown root:root "$M"
    fi
    case $e in
    kernel)
        mount -t overlay overlay -o "$opts,userxattr" "$M" 2>>"$log" || { cat "$log" >&2; die "kernel overlay mount failed"; }
        ;;
    fuse-overlayfs | stacko-overlay)
        local bin=$FOVL; [ "$e" = stacko-overlay ] && bin=$SOVL
        if [ -n "$rl" ]; then
            as_user "$bin" -f -o "$opts" "$M" >>"$log" 2>&1 &
        else
            "$bin" -f -o "$opts" "$M" >>"$log" 2>&1 &
        fi
        SRV_PID=$!; SERVERS+=("$SRV_PID"); echo "$SRV_PID" >> "$RUN/servers"
        ;;
    stacko-images)
        "$STACKO" --home "$SIH" delete-stackpoint bench >/dev/null 2>>"$log" || true
        "$STACKO" --home "$SIH" daemon-stop >/dev/null 2>&1 || true
        local i
        for ((i = 0; i < 100; i++)); do [ -z "$(daemon_pid)" ] && break; sleep 0.05; done
        [ -z "$(daemon_pid)" ] || die "the stacko daemon did not stop"
        "$STACKO" --home "$SIH" new-stackpoint bench top --dir "$M" >/dev/null 2>>"$log" || { cat "$log" >&2; die "new-stackpoint failed"; }
        "$STACKO" --home "$SIH" mount-stackpoint bench --backend fuse >/dev/null 2>>"$log" || { cat "$log" >&2; die "mount-stackpoint failed"; }
        SRV_PID=$(daemon_pid); echo "$SRV_PID" >> "$RUN/servers"
        ;;
    *) die "unknown engine $e" ;;
    esac
    CUR=$e
    wait_mount "$e${rl:+-rootless}" "$SRV_PID"
    MTYPE[$e${rl:+ rootless}]=$(awk -v m="$M" '$2 == m {t=$3} END {print t}' /proc/mounts)
    cold
}

rss() { # "VmHWM VmRSS" in KiB of SRV_PID
    awk '/^VmHWM/ {h=$2} /^VmRSS/ {r=$2} END {print h, r}' "/proc/$SRV_PID/status"
}

# ---------------------------------------------------------------- workloads
COUNT_FILE=$RUN/count
w_seq()   { dd if="$M/big.bin" of=/dev/null bs=1M status=none; }
w_find()  { find "$M" | wc -l > "$COUNT_FILE"; }
w_stat()  { find "$M" -printf '%s %m %u\n' > /dev/null; }
w_small() { find "$M" -type f -size -64k -print0 | xargs -0 cat > /dev/null; }
w_par()   { dd if="$M/par1.bin" of=/dev/null bs=1M status=none & local a=$!
            dd if="$M/par2.bin" of=/dev/null bs=1M status=none & local b=$!
            wait $a && wait $b; }
w_untar() { tar -xf "$TARF" -C "$M" && sync; }
w_append() { printf x >> "$M/big.bin" && sync; }
w_chmod() { chmod -R g+w "$M/sub"; }
w_rm()    { rm -rf "$M/sub"; }
w_mv()    { perl -e 'rename($ARGV[0], $ARGV[1]) or do { print STDERR ($!{EXDEV} ? "EXDEV\n" : "$!\n"); exit 1 }' "$M/sub" "$M/sub-moved" 2>"$RUN/mv.err"; }
rl_seq()  { as_user dd if="$M/big.bin" of=/dev/null bs=1M status=none; }
rl_par()  { as_user dd if="$M/par1.bin" of=/dev/null bs=1M status=none & local a=$!
            as_user dd if="$M/par2.bin" of=/dev/null bs=1M status=none & local b=$!
            wait $a && wait $b; }

check() { # check WORKLOAD ENGINE CONDITION-STATUS MESSAGE
    [ "$3" = 0 ] || problem "$1 on $2: $4"
}

# group ENGINE GROUP: one fresh mount, the workloads of GROUP, figures recorded
group() {
    local e=$1 g=$2
    fresh "$e"
    case $g in
    read)
        tm w_seq || die "$e: reading big.bin failed"; add seq_cold "$e" "$LAST"
        tm w_seq || die "$e: reading big.bin failed"; add seq_warm "$e" "$LAST" ;;
    find)
        tm w_find || die "$e: find failed"; add find_cold "$e" "$LAST"
        COUNT[$e]=$(cat "$COUNT_FILE")
        tm w_find || die "$e: find failed"; add find_warm "$e" "$LAST" ;;
    stat)
        tm w_stat || die "$e: find -printf failed"; add stat_cold "$e" "$LAST"
        tm w_stat || die "$e: find -printf failed"; add stat_warm "$e" "$LAST" ;;
    small)
        tm w_small || die "$e: reading the small files failed"; add small_cold "$e" "$LAST"
        if [ -n "$SRV_PID" ]; then local h k; read -r h k < <(rss); add rss_hwm "$e" "$h"; add rss_now "$e" "$k"; fi ;;
    par)
        tm w_par || die "$e: parallel reads failed"; add par_cold "$e" "$LAST" ;;
    untar)
        tm w_untar || die "$e: untar failed"; add untar "$e" "$LAST"
        local n; n=$(find "$M/untar" -type f | wc -l)
        check untar "$e" "$([ "$n" = "$TAR_FILES" ]; echo $?)" "extracted $n files of $TAR_FILES" ;;
    append)
        tm w_append || die "$e: append failed"; add append "$e" "$LAST"
        local s; s=$(stat -c %s "$M/big.bin")
        check append "$e" "$([ "$s" = $((BIG_MIB * 1048576 + 1)) ]; echo $?)" "size after append $s" ;;
    chmod)
        tm w_chmod || die "$e: chmod failed"; add chmod "$e" "$LAST"; sync
        local left; left=$(find "$M/sub" -type f ! -perm -g+w | wc -l)
        check chmod "$e" "$([ "$left" = 0 ]; echo $?)" "$left files not changed" ;;
    rm)
        tm w_rm || die "$e: rm -rf failed"; add rm "$e" "$LAST"; sync
        check rm "$e" "$([ ! -e "$M/sub" ]; echo $?)" "sub still there" ;;
    mv)
        if tm w_mv; then
            add mv "$e" "$LAST"
            local n; n=$(find "$M/sub-moved" -type f | wc -l)
            check mv "$e" "$([ "$n" = "$SUB_FILES" ] && [ ! -e "$M/sub" ]; echo $?)" "after mv: $n files under sub-moved"
        else
            NOTE[mv|$e]=$(head -1 "$RUN/mv.err")
        fi ;;
    esac
}

rl_group() {
    local e=$1 g=$2
    fresh "$e" rootless
    case $g in
    read)
        tm rl_seq || die "$e rootless: reading big.bin failed"; add rl_seq_cold "$e" "$LAST"
        tm rl_seq || die "$e rootless: reading big.bin failed"; add rl_seq_warm "$e" "$LAST" ;;
    par)
        tm rl_par || die "$e rootless: parallel reads failed"; add rl_par_cold "$e" "$LAST" ;;
    esac
}

# ---------------------------------------------------------------- setup
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$EPOCHREALTIME
unmount_all 2>/dev/null || true
if [ -d "$RUN" ]; then
    for m in $(awk -v r="$RUN" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m"; done
    rm -rf "$RUN"
fi
mkdir -p "$RUN/logs" "$M"
declare -A COUNT MTYPE

if [[ " $ENGINES " == *" stacko-images "* ]]; then
    if [ ! -x "$STACKO" ]; then
        SI_SKIP_REASON="stacko binary missing"
    else
        for c in import-image new-stackpoint mount-stackpoint umount-stackpoint delete-stackpoint; do
            "$STACKO" --help | grep -qw -- "$c" || SI_SKIP_REASON="$c unavailable"
        done
    fi
    if [ -z "$SI_SKIP_REASON" ]; then
        echo "importing the two layers as images base <- top"
        s=$EPOCHREALTIME
        "$STACKO" --home "$SIH" import-image base "$LB" >"$RUN/logs/import.log" 2>&1 \
            && "$STACKO" --home "$SIH" import-image top "$LA" --parent base >>"$RUN/logs/import.log" 2>&1 \
            || SI_SKIP_REASON="import-image failed: $(tail -1 "$RUN/logs/import.log")"
        echo "  import took $(calc "$EPOCHREALTIME - $s" 1) s"
    fi
    if [ -z "$SI_SKIP_REASON" ]; then
        SI_OK=1
        if ! ( "$STACKO" --home "$SIH" new-stackpoint bench top --dir "$M" >/dev/null 2>"$RUN/logs/probe.log" \
               && "$STACKO" --home "$SIH" mount-stackpoint bench --backend fuse >/dev/null 2>>"$RUN/logs/probe.log" \
               && [ -f "$M/big.bin" ] ); then
            SI_OK=0
            SI_SKIP_REASON="mount-stackpoint unavailable: $(tail -1 "$RUN/logs/probe.log")"
            "$STACKO" --home "$SIH" umount-stackpoint --lazy bench >/dev/null 2>&1 || true
            mounted "$M" && umount -l "$M"
        else
            CUR=stacko-images
        fi
        SRV_PID=""
    fi
    if [ -n "$SI_SKIP_REASON" ]; then
        echo "stacko images: skipped (${SI_SKIP_REASON%%:*})"
        echo "  ($SI_SKIP_REASON)"
        ENGINES=$(echo " $ENGINES " | sed 's/ stacko-images / /')
    fi
fi
read -r -a ENG <<< "$ENGINES"
[ "${#ENG[@]}" -gt 0 ] || die "no engine to run"

GROUPS_RW=(read find stat small par untar append chmod rm mv)
for ((r = 1; r <= RUNS; r++)); do
    # rotate the engine order each run so that no engine always goes first
    order=("${ENG[@]:$(( (r - 1) % ${#ENG[@]} ))}" "${ENG[@]:0:$(( (r - 1) % ${#ENG[@]} ))}")
    for g in "${GROUPS_RW[@]}"; do
        for e in "${order[@]}"; do group "$e" "$g"; done
        line="run $r $g:"
        for e in "${order[@]}"; do
            case $g in
            read) line+=" $e $(echo "${R[seq_cold|$e]}" | awk '{print $NF}')/$(echo "${R[seq_warm|$e]}" | awk '{print $NF}')s" ;;
            find | stat) line+=" $e $(echo "${R[${g}_cold|$e]}" | awk '{print $NF}')/$(echo "${R[${g}_warm|$e]}" | awk '{print $NF}')s" ;;
            small | par) line+=" $e $(echo "${R[${g}_cold|$e]}" | awk '{print $NF}')s" ;;
            *) line+=" $e ${NOTE[$g|$e]:-$(echo "${R[$g|$e]:-}" | awk '{print $NF}')s}" ;;
            esac
        done
        echo "$line"
    done
    if [ "$ROOTLESS" = 1 ]; then
        for g in read par; do
            for e in stacko-overlay fuse-overlayfs; do rl_group "$e" "$g"; done
        done
        echo "run $r rootless: stacko-overlay ${R[rl_seq_cold|stacko-overlay]}/${R[rl_seq_warm|stacko-overlay]} fuse-overlayfs ${R[rl_seq_cold|fuse-overlayfs]}/${R[rl_seq_warm|fuse-overlayfs]}"
    fi
done
unmount_all
if [ "$SI_OK" = 1 ]; then
    "$STACKO" --home "$SIH" daemon-stop >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do [ -z "$(daemon_pid)" ] && break; sleep 0.05; done
fi
[ "${KEEP:-0}" = 1 ] || rm -rf "$RUN/upper" "$RUN/work" "$SIH"   # KEEP=1 keeps the store and upper
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
t_total=$(calc "$EPOCHREALTIME - $t_start" 0)

# every engine must show the same tree
ref=""
for e in "${ENG[@]}"; do
    if [ -z "$ref" ]; then ref=${COUNT[$e]}; elif [ "${COUNT[$e]}" != "$ref" ]; then
        problem "find counts differ: ${ENG[0]} $ref, $e ${COUNT[$e]}"; fi
done

# ---------------------------------------------------------------- report
med() { local v=${R[$1|$2]:-}; [ -n "$v" ] && printf '%s\n' $v | median; }
fmt_cell() { # WORKLOAD ENGINE
    local w=$1 e=$2 v
    v=$(med "$w" "$e")
    if [ -z "$v" ]; then
        if [ -n "${NOTE[$w|$e]:-}" ]; then echo "${NOTE[$w|$e]}"; else echo "—"; fi
        return
    fi
    case $w in
    rss_*) echo "$(calc "$v / 1024" 0) MiB" ;;
    seq_* | rl_seq_*) echo "$v s ($(calc "$BIG_MIB / $v" 0) MiB/s)" ;;
    par_* | rl_par_*) echo "$v s ($(calc "2 * $PAR_MIB / $v" 0) MiB/s)" ;;
    *) echo "$v s" ;;
    esac
}
ratio() { # WORKLOAD ENGINE PEER
    local a b; a=$(med "$1" "$2"); b=$(med "$1" "$3")
    if [ -n "$a" ] && [ -n "$b" ] && [ "$(calc "$b > 0" 0)" = 1 ]; then calc "$a / $b" 2; else echo "—"; fi
}
# verdict WORKLOAD ENGINE: PASS or MISS (why) against issue 3's targets
verdict() {
    local w=$1 e=$2 v k f why=()
    v=$(med "$w" "$e"); k=$(med "$w" kernel); f=$(med "$w" fuse-overlayfs)
    if [ -z "$v" ]; then
        [ -n "${NOTE[$w|$e]:-}" ] && { echo "MISS (${NOTE[$w|$e]})"; return; }
        echo "—"; return
    fi
    local lim="" abs=""
    case $w in
    seq_cold) lim=1 ;; seq_warm) lim=$(calc "1 / 0.9" 4) ;;
    find_*) lim=2 ;; stat_*) lim=1.5 ;; small_cold) lim=1.3 ;;
    untar | rm) lim=2 ;; append) lim=1 ;;
    chmod) abs=0.5 ;; mv) abs=0.1 ;;
    rss_hwm) [ "$(calc "$v <= 256 * 1024" 0)" = 1 ] && echo PASS || echo "MISS ($(calc "$v / 1024" 0) MiB > 256 MiB)"; return ;;
    rss_now) echo "—"; return ;;
    esac
    if [ -n "$lim" ] && [ -n "$k" ]; then
        local rk; rk=$(calc "$v / $k" 2)
        [ "$(calc "$v <= $lim * $k" 0)" = 1 ] || why+=("${rk}× kernel, target ≤ $(calc "$lim" 2)×")
    fi
    if [ -n "$abs" ]; then
        [ "$(calc "$v <= $abs" 0)" = 1 ] || why+=("$v s > $abs s")
    fi
    if [ -n "$f" ]; then
        [ "$(calc "$v < $f" 0)" = 1 ] || why+=("not faster than fuse-overlayfs: $(calc "$v / $f" 2)×")
    fi
    if [ ${#why[@]} = 0 ]; then echo PASS; else
        local out=${why[0]} x; for x in "${why[@]:1}"; do out+="; $x"; done; echo "MISS ($out)"; fi
}

have() { [[ " ${ENG[*]} " == *" $1 "* ]]; }
cell_or_skip() { if have "$2"; then fmt_cell "$1" "$2"; else echo "${SI_SKIP_REASON:+skipped}"; fi; }
rows=(
    "seq_cold|sequential read of the $BIG_MIB MiB lower file, cold|≥ 1× kernel MB/s; > fuse-overlayfs"
    "seq_warm|sequential read of the $BIG_MIB MiB lower file, warm|≥ 0.9× kernel MB/s; > fuse-overlayfs"
    "find_cold|\`find \| wc -l\`, cold|≤ 2×; < fuse-overlayfs"
    "find_warm|\`find \| wc -l\`, warm|≤ 2×; < fuse-overlayfs"
    "stat_cold|\`find -printf '%s %m %u'\` (lstat each), cold|≤ 1.5×; < fuse-overlayfs"
    "stat_warm|\`find -printf '%s %m %u'\` (lstat each), warm|≤ 1.5×; < fuse-overlayfs"
    "small_cold|read every file < 64 KiB (find \| xargs cat), cold|≤ 1.3×; < fuse-overlayfs"
    "untar|extract a $TAR_FILES-file tar + sync|≤ 2×; < fuse-overlayfs"
    "append|append 1 byte to the $BIG_MIB MiB lower file (copy-up) + sync|≤ 1×; < fuse-overlayfs"
    "chmod|\`chmod -R g+w\` of $SUB_FILES lower files|≤ 0.5 s; < fuse-overlayfs"
    "rm|\`rm -rf\` of a $SUB_FILES-file lower subtree|≤ 2×; < fuse-overlayfs"
    "mv|rename(2) of a $SUB_FILES-file lower directory|≤ 0.1 s, no EXDEV; < fuse-overlayfs"
    "par_cold|two parallel readers, 2 × $PAR_MIB MiB lower files, cold|< fuse-overlayfs"
    "rss_hwm|server peak RSS (VmHWM) after reading every small file|≤ 256 MiB"
    "rss_now|server RSS (VmRSS) at that point|—"
)
sizes="$N_FILES small files over two layers (+ $SUB_FILES in the subtree), one $BIG_MIB MiB file, $TAR_FILES-file tar, 2 × $PAR_MIB MiB for the parallel readers"
quick=""
if [ "$N_FILES" -lt 100000 ] || [ "$BIG_MIB" -lt 2048 ] || [ "$SUB_FILES" -lt 10000 ] || [ "$TAR_FILES" -lt 20000 ] || [ "$RUNS" -lt 3 ]; then
    quick=" Sizes or runs below the issue's: PASS/MISS is indicative only."
fi
rev=$(cd "$top" && git rev-parse --short HEAD 2>/dev/null || echo "?")
dirty=$(cd "$top" && git status --porcelain -- fusefs src store cli 2>/dev/null | grep -q . && echo "+uncommitted changes" || true)
report=$(
    echo "### Merged filesystem, issue 3 ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, kernel $(uname -r))"
    echo
    echo "bench/fs.sh: $sizes; median of $RUNS runs; every workload on a fresh mount with caches dropped. stacko $rev$dirty (stacko-overlay built $(date -u -r "$SOVL" '+%Y-%m-%d %H:%M UTC')), fuse-overlayfs $("$FOVL" --version 2>&1 | awk '/fuse-overlayfs: version/ {print $3}'). Load average at start $load_start, at end $load_end; the run took ${t_total} s.$quick"
    echo
    echo "| workload | kernel | fuse-overlayfs | stacko-overlay | stacko images | overlay / kernel | overlay / fuse-ovl | images / kernel | images / fuse-ovl | target | stacko-overlay | stacko images |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for row in "${rows[@]}"; do
        IFS='|' read -r w label target <<< "${row//\\|/<PIPE>}"
        label=${label//<PIPE>/\\|}; target=${target//<PIPE>/\\|}
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" \
            "$(cell_or_skip "$w" kernel)" "$(cell_or_skip "$w" fuse-overlayfs)" \
            "$(cell_or_skip "$w" stacko-overlay)" "$(cell_or_skip "$w" stacko-images)" \
            "$(ratio "$w" stacko-overlay kernel)" "$(ratio "$w" stacko-overlay fuse-overlayfs)" \
            "$(ratio "$w" stacko-images kernel)" "$(ratio "$w" stacko-images fuse-overlayfs)" \
            "$target" "$(have stacko-overlay && verdict "$w" stacko-overlay)" \
            "$(if have stacko-images; then verdict "$w" stacko-images; else echo "${SI_SKIP_REASON:+skipped}"; fi)"
    done
    if [ "$ROOTLESS" = 1 ]; then
        echo
        echo "Rootless (user $RL_USER, mounted through fusermount3, read-only workloads; target: stacko-overlay ≥ fuse-overlayfs):"
        echo
        echo "| workload | fuse-overlayfs | stacko-overlay | stacko / fuse-ovl (time) | verdict |"
        echo "|---|---|---|---|---|"
        for row in "rl_seq_cold|sequential read of the $BIG_MIB MiB lower file, cold" \
                   "rl_seq_warm|sequential read of the $BIG_MIB MiB lower file, warm" \
                   "rl_par_cold|two parallel readers, 2 × $PAR_MIB MiB, cold"; do
            IFS='|' read -r w label <<< "$row"
            a=$(med "$w" stacko-overlay); b=$(med "$w" fuse-overlayfs)
            v="PASS"; [ "$(calc "$a <= $b" 0)" = 1 ] || v="MISS ($(calc "$a / $b" 2)× fuse-overlayfs time)"
            printf '| %s | %s | %s | %s | %s |\n' "$label" "$(fmt_cell "$w" fuse-overlayfs)" \
                "$(fmt_cell "$w" stacko-overlay)" "$(ratio "$w" stacko-overlay fuse-overlayfs)" "$v"
        done
    fi
    echo
    echo "Mount types in /proc/mounts: $(for k in "${!MTYPE[@]}"; do printf '%s %s; ' "$k" "${MTYPE[$k]}"; done)"
    echo
    echo "Entries seen by \`find | wc -l\`: $(for e in "${ENG[@]}"; do printf '%s %s; ' "$e" "${COUNT[$e]}"; done)"
    [ -n "$SI_SKIP_REASON" ] && echo "stacko images: skipped ($SI_SKIP_REASON)."
    if [ ${#problems[@]} -gt 0 ]; then
        echo; echo "Wrong results seen (the figure of that engine is not comparable):"
        for p in "${problems[@]}"; do echo "- $p"; done
    fi
    true
)
echo
echo "$report"
[ "${NO_RESULTS:-0}" = 1 ] || printf '\n%s\n' "$report" >> "$here/RESULTS.md"
