#!/usr/bin/env python3
"""System calls per request, by thread: what meshca asks of the kernel for
one /sign, agent leaf or roots request, beside the HTTP floor.

Starts the server (meshca as compare.py does: data on disk, ACLs and rate
limits off; or crates/meshca-bench's `http-floor`), warms it up, then
traces every thread with `strace -f` while wrk sends requests for a
bounded time, and prints the calls per request by thread and call
(`futex` by operation, `write` by file descriptor).

strace slows every system call, so the rates under it are not the
server's; the counts per request are what this is for: a wake-up that
costs a `futex` or an eventfd `write` per request, a sync per batch.

    python3 scripts/bench/syscalls.py [--server meshca|http-floor] [--op sign|leaf|roots] \\
        [--conns 16] [--seconds 3] [--meshca BIN] [--http-floor BIN]
"""

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (REPO, make_csr, start_http_floor, start_meshca, wrk,  # noqa: E402
                     write_body)

# The HTTP floor has no trust domain of its own: any SPIFFE ID will do.
FLOOR_TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"
CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)")


def thread_names(pid):
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            names[tid] = f.read().strip()
    return names


def fd_names(pid):
    """What each open file descriptor is (`anon_inode:[eventfd]`, a path)."""
    names = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        # A file by its name alone: the temporary directory says nothing.
        names[fd] = os.path.basename(target) if target.startswith("/") else target
    return names


def count(trace, names, fds):
    """Calls in an `strace -f -o` file by (thread, call, detail): a
    `futex` by its operation, a `write` by what it writes to (the
    runtime's eventfd is a wake-up, stderr a log line)."""
    counts = collections.Counter()
    with open(trace) as f:
        for line in f:
            m = CALL.match(line)
            if not m:
                continue
            tid, call, args = m.groups()
            if call == "futex":
                detail = args.split(",")[1].strip() if "," in args else ""
            elif call == "write":
                fd = args.split(",")[0]
                detail = fds.get(fd, "fd " + fd)
            else:
                detail = ""
            counts[(names.get(tid, "thread " + tid), call, detail)] += 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", choices=["meshca", "http-floor"], default="meshca")
    ap.add_argument("--op", choices=["sign", "leaf", "roots"], default="sign")
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--meshca", default=os.path.join(REPO, "target/release/meshca"))
    ap.add_argument("--http-floor", default=os.path.join(REPO, "target/release/http-floor"))
    args = ap.parse_args()
    if args.server == "http-floor" and args.op == "roots":
        raise SystemExit("the HTTP floor has no roots endpoint")

    with tempfile.TemporaryDirectory(prefix="meshca-syscalls-") as work:
        if args.server == "meshca":
            server, base, trust_domain = start_meshca(work, os.path.abspath(args.meshca))
        else:
            server, base = start_http_floor(work, os.path.abspath(args.http_floor))
            trust_domain = FLOOR_TRUST_DOMAIN
        try:
            csr = make_csr(work, f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/web")
            how = {
                "sign": ("/v1/connect/ca/sign",
                         dict(method="POST", body_file=write_body(work, "sign.json", {"CSR": csr}))),
                "leaf": ("/v1/agent/connect/ca/leaf/svc-", dict(unique=True)),
                "roots": ("/v1/connect/ca/roots", {}),
            }
            path, kw = how[args.op]
            wrk(base + path, args.conns, 1, **kw)
            names = thread_names(server.proc.pid)
            fds = fd_names(server.proc.pid)
            trace = os.path.join(work, "strace.out")
            tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", trace, "-p", str(server.proc.pid)],
                                      stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # strace has attached to every thread
            answered = wrk(base + path, args.conns, args.seconds, **kw)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=60)
        finally:
            server.stop()
        n = max(answered["requests"], 1)
        print(f"{args.server} {args.op}, {args.conns} connections: {n} requests in "
              f"{args.seconds} s under strace\n")
        print("| thread | call | | per request |\n|---|---|---|---:|")
        for (thread, call, detail), calls in count(trace, names, fds).most_common():
            if calls / n >= 0.001:
                print(f"| {thread} | `{call}` | {detail} | {calls / n:.3f} |")


if __name__ == "__main__":
    main()
