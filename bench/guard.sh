# Sourced by bench/*.sh that mount things. `guard RUN_DIR "$@"` re-runs the
# calling script as a child and waits for it. On Ctrl-C or SIGTERM the parent
# sends SIGTERM to the child, whose EXIT trap unmounts everything and stops
# its servers. (Bash delays a trap until the foreground command ends, so a
# command stuck on a FUSE mount would delay it forever: if the child has not
# finished within 20 s, the parent aborts the FUSE connections mounted under
# RUN_DIR, unmounts them lazily and kills the servers the child listed in
# RUN_DIR/servers, one pid a line.)
# In the child, SIGINT is ignored (an asynchronous command of a non-interactive
# shell) and SIGTERM runs the cleanup.

guard() {
    [ -n "${BENCH_GUARDED:-}" ] && return 0
    local run=$1; shift
    BENCH_GUARDED=1 bash "$0" "$@" &
    GUARD_CHILD=$!
    GUARD_RUN=$run
    trap guard_stop INT TERM
    local rc=0
    wait "$GUARD_CHILD" || rc=$?
    exit "$rc"
}

guard_stop() {
    trap '' INT TERM
    echo "interrupted: cleaning up" >&2
    kill -TERM "$GUARD_CHILD" 2>/dev/null
    local i
    for ((i = 0; i < 200; i++)); do kill -0 "$GUARD_CHILD" 2>/dev/null || exit 130; sleep 0.1; done
    echo "cleanup is stuck: aborting the FUSE connections under $GUARD_RUN" >&2
    local dev mnt type
    # /proc/self/mountinfo: 3rd field major:minor, 5th the mount point, type after " - "
    while read -r dev mnt type; do
        case $type in fuse*) echo 1 > "/sys/fs/fuse/connections/${dev#*:}/abort" 2>/dev/null ;; esac
        umount -l "$mnt" 2>/dev/null
    done < <(awk -v r="$GUARD_RUN" '{ for (i = 7; $i != "-"; i++); if (index($5, r) == 1) print $3, $5, $(i + 1) }' /proc/self/mountinfo | sort -r -k2)
    if [ -f "$GUARD_RUN/servers" ]; then
        local p
        # only pids still running one of the child's servers (a pid may have been reused)
        while read -r p; do
            [ -n "$p" ] && tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$GUARD_RUN" && kill "$p" 2>/dev/null
        done < "$GUARD_RUN/servers"
    fi
    for ((i = 0; i < 50; i++)); do kill -0 "$GUARD_CHILD" 2>/dev/null || exit 130; sleep 0.1; done
    kill -9 "$GUARD_CHILD" 2>/dev/null
    exit 130
}
