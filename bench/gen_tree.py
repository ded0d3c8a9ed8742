#!/usr/bin/env python3
"""Generates benchmark trees for bench/*.sh.

  gen_tree.py tree DEST NFILES SEED [START]
                                         a tree of NFILES files in nested dirs, numbered
                                         from START (default 0): two calls with the same
                                         DEST layout and disjoint ranges give two layers
                                         whose directories merge
  gen_tree.py flat DEST NFILES PERDIR SEED
                                         NFILES files in directories of PERDIR files
  gen_tree.py mutate DEST PERCENT SEED   rewrites PERCENT% of DEST's files with new content
  gen_tree.py big DEST MIB               one file of MIB MiB of incompressible data

File sizes: 60% 64 B-4 KiB (stored inline), 35% 4-32 KiB, 5% 32-256 KiB,
about 15 KiB on average; ~50 files a directory, three levels deep; a few symlinks.
"""
import os
import random
import sys


def size_for(rng):
    r = rng.random()
    if r < 0.60:
        return rng.randint(64, 4096)
    if r < 0.95:
        return rng.randint(4097, 32 * 1024)
    return rng.randint(32 * 1024 + 1, 256 * 1024)


def tree(dest, nfiles, seed, start=0):
    rng = random.Random(seed)
    os.makedirs(dest, exist_ok=True)
    for i in range(start, start + nfiles):
        d = os.path.join(dest, "d%02d" % (i % 40), "e%02d" % ((i // 40) % 50))
        if i - start < 2000:
            os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "f%06d" % i)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size_for(rng)))
        if i % 1000 == 0:
            os.symlink("f%06d" % i, path + ".lnk")


def flat(dest, nfiles, perdir, seed):
    rng = random.Random(seed)
    for i in range(nfiles):
        d = os.path.join(dest, "s%04d" % (i // perdir))
        if i % perdir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "g%06d" % i), "wb") as f:
            f.write(rng.randbytes(size_for(rng)))


def mutate(dest, percent, seed):
    rng = random.Random(seed)
    files = []
    for root, _dirs, names in os.walk(dest):
        for n in names:
            p = os.path.join(root, n)
            if not os.path.islink(p):
                files.append(p)
    files.sort()
    for p in rng.sample(files, len(files) * percent // 100):
        size = os.path.getsize(p)
        with open(p, "wb") as f:
            f.write(rng.randbytes(size))


def big(dest, mib):
    chunk = os.urandom(1 << 20)
    with open(dest, "wb") as f:
        for i in range(mib):
            # vary each MiB so no two chunks are equal
            f.write(i.to_bytes(8, "little") + chunk[8:])


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "tree":
        start = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        tree(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), start)
    elif cmd == "flat":
        flat(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif cmd == "mutate":
        mutate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "big":
        big(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: gen_tree.py tree|flat|mutate|big ...")
