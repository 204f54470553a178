#!/usr/bin/env python3
"""What one `fdatasync` costs when it grows the file, against one that only
overwrites bytes already in it: the reason the issuance journal writes its
segments ahead in blank fill (crates/meshca-journal).

For each way of writing, appends ENTRIES lines of 952 bytes (a journal
entry's size) per sync, SYNCS times, in a file in DIR, and prints the wall
time and the CPU time (user + system, this process) per sync:

  * grow:     the file grows with every write (the journal before);
  * keepsize: blocks reserved with fallocate(FALLOC_FL_KEEP_SIZE), so the
              file's size still changes with every write;
  * fill:     the file already holds blank fill where the lines go (the
              journal now).

    python3 scripts/bench/sync_cost.py [--dir DIR] [--entries 6] [--syncs 2000] [--rounds 3]

DIR must be on the disk under test (the default is the current directory;
/tmp may be a tmpfs, where a sync costs nothing).
"""

import argparse
import ctypes
import os
import resource
import time

LINE = b"x" * 951 + b"\n"
FALLOC_FL_KEEP_SIZE = 1


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def prepare(fd, how, total):
    if how == "fill":
        os.write(fd, b" " * total)
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    elif how == "keepsize":
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(total)) != 0:
            raise OSError(ctypes.get_errno(), "fallocate")
        os.fsync(fd)


def measure(path, how, entries, syncs):
    batch = LINE * entries
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        prepare(fd, how, len(batch) * syncs + 4096)
        cpu, start = cpu_seconds(), time.perf_counter()
        for _ in range(syncs):
            os.write(fd, batch)
            os.fdatasync(fd)
        wall = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
    finally:
        os.close(fd)
        os.unlink(path)
    return wall / syncs * 1e6, cpu / syncs * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=".")
    parser.add_argument("--entries", type=int, default=6, help="lines per sync")
    parser.add_argument("--syncs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = os.path.join(args.dir, f"sync-cost-{os.getpid()}.tmp")
    print(f"{args.entries} lines of {len(LINE)} bytes per sync, {args.syncs} syncs, in {args.dir}")
    print("| round | write | wall µs per sync | CPU µs per sync |")
    print("|---:|---|---:|---:|")
    for n in range(1, args.rounds + 1):
        for how in ("grow", "keepsize", "fill"):
            wall, cpu = measure(path, how, args.entries, args.syncs)
            print(f"| {n} | {how} | {wall:.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
