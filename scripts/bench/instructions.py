#!/usr/bin/env python3
"""Instructions per request, counted by valgrind's callgrind: repeatable on a
shared machine where timings drift by ±20% between runs.

Starts meshca (release build, data on disk, ACLs and rate limits off, as
compare.py does) under `valgrind --tool=callgrind`, warms it up, then for
each call zeroes the counters, sends a fixed number of requests over
keep-alive connections and dumps the counters. It prints the user-space
instructions per request (every thread: HTTP, handlers, the journal's
writer) and, for /sign, where they go.

Two binaries side by side (`--baseline OLD`) give the ratio of a change.
`--http-floor BIN` adds the HTTP floor (crates/meshca-bench's `http-floor`:
the same stack doing only the cryptography) as a column for /sign and the
agent leaf: what meshca's own work adds, in instructions.

`--keep DIR` keeps each call's callgrind dump there (`meshca-sign.out`,
`baseline-leaf.out`, `http-floor-sign.out`, …) for `callgrind_annotate
--inclusive=yes DUMP` or `--tree=caller`, to see where a row's
instructions go function by function.

Caveats: callgrind counts user space only: system calls, the kernel's
TCP, context switches and disk syncs are not in these numbers (compare.py's
CPU per request has them). Under valgrind aws-lc takes its generic code
paths, so the cryptography counts more instructions than it runs natively;
it is the same in both columns.

`scripts/bench/run instructions` installs valgrind and builds meshca first.
"""

import argparse
import glob
import http.client as httpclient
import os
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import REPO, free_port, http, make_csr, port_accepts, wait_until  # noqa: E402

# Parts of a /sign request, by a function that contains them all
# (inclusive counts; the names are stable Rust paths).
SIGN_PARTS = [
    ("CSR validation (parse, proof of possession)", "meshca_core::csr::validate_csr"),
    ("  of which the signature check", "meshca_core::csr::checked_key"),
    ("signing (build, sign)", "meshca_provider::builtin::Keys::sign_leaf"),
    ("self-check of the issued leaf", "meshca_provider::signer::ChainCheck::verify"),
    ("audit line", "meshca_ca::issue::<impl meshca_ca::CaEngine>::record"),
    ("answer as JSON", "meshca_server::routes::to_json"),
]


def load(port, path, n, conns, body=None):
    """n requests over `conns` keep-alive connections; fails on any non-200."""
    failures = []

    def worker(count):
        try:
            requests(count)
        except Exception as e:  # a thread's exception would go unnoticed
            failures.append(repr(e))

    def requests(count):
        c = httpclient.HTTPConnection("127.0.0.1", port, timeout=300)
        for i in range(count):
            target = path.replace("{n}", f"{threading.get_ident()}-{i}")
            if body is None:
                c.request("GET", target)
            else:
                c.request("POST", target, body=body,
                          headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                failures.append(r.status)
        c.close()

    threads = [threading.Thread(target=worker, args=(n // conns,)) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"{path}: {len(failures)} answers were not 200 (first {failures[0]})")
    return (n // conns) * conns


def inclusive(dump, names):
    """Inclusive instruction counts of the functions `names` in `dump`."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                         capture_output=True, text=True, check=True).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].replace(",", "").isdigit():
            continue
        ir = int(parts[0].replace(",", ""))
        if "PROGRAM TOTALS" in line:
            counts["total"] = ir
            continue
        for name in names:
            # A recursive entry is marked '2; the outer one is what we want.
            if f":{name} [" in line and name not in counts:
                counts[name] = ir
    return counts


def measure(binary, n, conns, keep=None):
    with tempfile.TemporaryDirectory(prefix="meshca-instr-") as work:
        port = free_port()
        config = os.path.join(work, "meshca.json")
        with open(config, "w") as f:
            f.write('{"acl": {"enabled": false}, "connect": {"ca_config": '
                    '{"csr_max_per_second": 0, "csr_max_concurrent": 0}}}')
        out = os.path.join(work, "callgrind.out")
        log = open(os.path.join(work, "meshca.log"), "wb")
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, "server",
             "--data-dir", os.path.join(work, "data"), "--client", "127.0.0.1",
             "--http-port", str(port), "--config-file", config],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until("meshca under valgrind", lambda: http("GET", base + "/v1/connect/ca/roots"),
                       timeout=180)
            import json
            td = json.loads(http("GET", base + "/v1/connect/ca/roots"))["TrustDomain"]
            csr = make_csr(work, f"spiffe://{td}/ns/default/dc/dc1/svc/web")
            body = json.dumps({"CSR": csr}).encode()
            calls = [
                ("sign", "/v1/connect/ca/sign", n, body),
                ("leaf", "/v1/agent/connect/ca/leaf/svc-{n}", n, None),
                ("leaf-cached", "/v1/agent/connect/ca/leaf/cached", n * 10, None),
                ("roots", "/v1/connect/ca/roots", n * 10, None),
            ]
            # Issued once here, so that every request counted is a hit.
            http("GET", base + "/v1/agent/connect/ca/leaf/cached")
            return count_calls(server.pid, out, port, body, calls, conns, keep)
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()


def measure_http_floor(binary, n, conns, keep=None):
    """The HTTP floor's /sign and agent leaf (crates/meshca-bench's
    `http-floor`): the same stack doing only the cryptography."""
    import json
    with tempfile.TemporaryDirectory(prefix="meshca-instr-floor-") as work:
        port = free_port()
        out = os.path.join(work, "callgrind.out")
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            wait_until("the HTTP floor under valgrind", lambda: port_accepts(port), timeout=180)
            csr = make_csr(work, "spiffe://11111111-2222-3333-4444-555555555555.consul"
                                 "/ns/default/dc/dc1/svc/web")
            body = json.dumps({"CSR": csr}).encode()
            calls = [("sign", "/v1/connect/ca/sign", n, body),
                     ("leaf", "/v1/agent/connect/ca/leaf/svc-{n}", n, None)]
            return count_calls(server.pid, out, port, body, calls, conns, keep)
        finally:
            server.terminate()
            server.wait(timeout=60)


def count_calls(pid, out, port, sign_body, calls, conns, keep=None):
    """Warms the server under callgrind up, then per call zeroes its
    counters, sends the requests and dumps them: instructions per request,
    in total and in the /sign parts. With `keep` (a path prefix), each
    dump is copied to `<keep>-<call>.out`."""
    load(port, "/v1/connect/ca/sign", 40, 4, sign_body)
    load(port, "/v1/agent/connect/ca/leaf/warm-{n}", 40, 4)
    results = {}
    for step, (name, path, count, payload) in enumerate(calls, start=1):
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
        done = load(port, path, count, conns, payload)
        subprocess.run(["callgrind_control", "-d", name, str(pid)], check=True, capture_output=True)
        dump = wait_for_dump(out, step)
        if keep:
            shutil.copyfile(dump, f"{keep}-{name}.out")
        counts = inclusive(dump, [fn for _, fn in SIGN_PARTS])
        results[name] = {k: v / done for k, v in counts.items()}
    return results


def wait_for_dump(out, step):
    import time
    for _ in range(300):
        found = glob.glob(f"{out}.{step}")
        if found:
            time.sleep(0.5)  # callgrind writes it in one go; let it finish
            return found[0]
        time.sleep(0.1)
    raise SystemExit(f"callgrind wrote no dump {out}.{step}")


def report(columns, names):
    """One column per binary; with two, the ratio of the first to the
    second. A part a binary does not have is left blank."""
    ratio = len(names) == 2
    print("| | " + " | ".join(names) + (" | ratio |" if ratio else " |"))
    print("|---" * (len(names) + 1 + ratio) + "|")

    def row(label, key, call):
        vals = [c.get(call, {}).get(key) for c in columns]
        if vals[0] is None:
            return
        cells = ["" if v is None else f"{v / 1000:,.0f} k" for v in vals]
        if ratio:
            cells.append(f"{vals[0] / vals[1]:.2f}" if vals[1] else "")
        print(f"| {label} | " + " | ".join(cells) + " |")

    for call in ("sign", "leaf", "leaf-cached", "roots"):
        row(f"**{call}**, per request", "total", call)
        if call == "sign":
            for label, fn in SIGN_PARTS:
                row(f"  {label}", fn, call)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meshca", default=os.path.join(REPO, "target/release/meshca"))
    ap.add_argument("--baseline", help="another meshca binary, measured the same way")
    ap.add_argument("--http-floor", help="the HTTP floor's binary (target/release/http-floor): "
                    "its /sign and agent leaf as a column")
    ap.add_argument("--requests", type=int, default=400, help="per call (a cached leaf and roots: ten times)")
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--keep", help="a directory to keep each call's callgrind dump in")
    args = ap.parse_args()
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    kept = lambda name: os.path.join(args.keep, name) if args.keep else None
    binaries = [args.meshca] + ([args.baseline] if args.baseline else [])
    names = ["meshca"] if len(binaries) == 1 else ["meshca", "baseline"]
    columns = []
    for b, name in zip(binaries, names):
        print(f"measuring {b} under callgrind", file=sys.stderr)
        columns.append(measure(b, args.requests, args.conns, kept(name)))
    if args.http_floor:
        print(f"measuring {args.http_floor} under callgrind", file=sys.stderr)
        columns.append(measure_http_floor(args.http_floor, args.requests, args.conns,
                                          kept("http-floor")))
        names.append("HTTP floor")
    print(f"Instructions per request (callgrind, user space, {args.requests} requests per "
          f"call over {args.conns} connections):\n")
    report(columns, names)


if __name__ == "__main__":
    main()
