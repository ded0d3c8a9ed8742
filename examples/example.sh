#!/usr/bin/env bash
# The README's example, end to end: images edited through a writable mount,
# a stackpoint, a file written in its instance, a cutover to a new image (the
# file is gone), a fallback (the file is back).
#
# Run as root after `cargo build --release`:  bash examples/example.sh
# It uses target/release/stacko and a temporary --home, prints each command,
# and removes everything it made (mounts, daemon, files) when it ends.
# Set STACKO_BACKEND=fuse to mount with the FUSE filesystem instead of kernel overlayfs.
set -euo pipefail
cd "$(dirname "$0")/.."

STACKO_BIN=${STACKO_BIN:-$PWD/target/release/stacko}
if [ ! -x "$STACKO_BIN" ]; then
    echo "example.sh: $STACKO_BIN not found: run \`cargo build --release\` first" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "example.sh: run as root (it mounts; as an ordinary user, use the same commands with fusermount3)" >&2
    exit 1
fi

HOME_DIR=$(mktemp -d /tmp/stacko-example.XXXXXX)
BACKEND=()
if [ -n "${STACKO_BACKEND:-}" ]; then BACKEND=(--backend "$STACKO_BACKEND"); fi

cleanup() {
    set +e
    # Unmount whatever is still mounted below the temp home, then stop the daemon.
    for m in $(awk -v h="$HOME_DIR" 'index($5, h) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
        umount -l "$m"
    done
    "$STACKO_BIN" --home "$HOME_DIR" daemon-stop 2>/dev/null
    rm -rf "$HOME_DIR"
}
trap cleanup EXIT

stacko() {
    printf '\n$ stacko %s\n' "$*" >&2
    "$STACKO_BIN" --home "$HOME_DIR" "$@"
}
say() { printf '\n# %s\n' "$*" >&2; }
check() {
    # check FILE EXPECTED: the file holds exactly EXPECTED (one line)
    local got
    got=$(cat "$1")
    if [ "$got" != "$2" ]; then
        echo "example.sh: FAILED: $1 holds '$got', expected '$2'" >&2
        exit 1
    fi
    echo "  $1: $got" >&2
}

say "a base image, edited through a writable mount"
stacko new-image base
dir=$(stacko edit-image base "${BACKEND[@]}")
mkdir -p "$dir/etc" "$dir/usr/bin"
echo "base config" > "$dir/etc/config"
printf '#!/bin/sh\necho hello from base\n' > "$dir/usr/bin/hello"
chmod 755 "$dir/usr/bin/hello"
stacko close-image base

say "two versions of an application on top of it"
for v in 1 2; do
    stacko new-image "app-$v" base
    dir=$(stacko edit-image "app-$v" "${BACKEND[@]}")
    mkdir -p "$dir/app"
    echo "version $v" > "$dir/app/version"
    stacko close-image "app-$v"
done
stacko list-images --tree

say "a stackpoint showing an instance of app-1"
stacko new-stackpoint sp app-1
stacko mount-stackpoint sp "${BACKEND[@]}"
sp=$(stacko get-stackpoint-dir sp)
check "$sp/app/version" "version 1"
check "$sp/etc/config" "base config"
echo "my data" > "$sp/written"
check "$sp/written" "my data"

say "cut over to app-2: a new instance; the file written in the old one is not there"
stacko cutover-stackpoint sp app-2
check "$sp/app/version" "version 2"
if [ -e "$sp/written" ]; then echo "example.sh: FAILED: $sp/written survived the cutover" >&2; exit 1; fi
echo "  $sp/written: gone"

say "fall back: the previous instance, with the file"
stacko fallback-stackpoint sp
check "$sp/app/version" "version 1"
check "$sp/written" "my data"
stacko list-stackpoints
stacko list-instances sp

say "unmount"
stacko umount-stackpoint sp
if stacko is-stackpoint-mounted sp; then echo "example.sh: FAILED: still mounted" >&2; exit 1; fi
echo "  not mounted"

say "the example worked"
