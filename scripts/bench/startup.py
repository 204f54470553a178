#!/usr/bin/env python3
"""Start-up and root rotation beside a large issuance journal.

Starts meshca once on a fresh data dir (ACLs on, as by default), issues one
agent leaf to have a real journal line, stops it, and writes `--records`
more entries (default one million) in the journal's format and segment
size, each with its own serial and service. Then, for that journal and for
the same store with an empty journal, it starts the server `--starts` times,
timing launch to the `meshca ready` line, and on each start rotates the root
`--rotations` times (`PUT /v1/connect/ca/configuration`, EC P-384 and P-256
in turn, each cross-signed), timing each answer. The first rotation after a
start is reported apart: it is where a cost paid once per process shows.

Prints a Markdown table for docs/BENCHMARKS.md.

    python3 scripts/bench/startup.py [--meshca target/release/meshca] [--records 1000000]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import REPO, free_port, http, stop_process  # noqa: E402

JOURNAL = "journal"
SEGMENT_BYTES = 64 * 1024 * 1024  # meshca_journal::DEFAULT_SEGMENT_BYTES
READY = "meshca ready"


class Meshca:
    """One server process; `ready_ms` is launch to its ready line."""

    def __init__(self, binary, data_dir):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        ready = threading.Event()
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "server", "--data-dir", data_dir, "--client", "127.0.0.1",
             "--http-port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.ready_ms = None

        def drain():
            for line in self.proc.stderr:
                if self.ready_ms is None and READY in line:
                    self.ready_ms = (time.monotonic() - started) * 1000
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(60) or self.ready_ms is None:
            self.stop()
            raise SystemExit("meshca did not become ready within 60 s")
        self.token = {"X-Consul-Token": read(os.path.join(data_dir, "bootstrap-token")).strip()}

    def rotate(self):
        """Rotates to the other EC size; the answer's time in ms."""
        config = json.loads(http("GET", self.base + "/v1/connect/ca/configuration",
                                 headers=self.token))
        bits = 384 if config["Config"].get("PrivateKeyBits") == 256 else 256
        body = {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": bits}}
        started = time.monotonic()
        http("PUT", self.base + "/v1/connect/ca/configuration", body, self.token)
        return (time.monotonic() - started) * 1000

    def stop(self):
        stop_process(self.proc)


def read(path):
    with open(path) as f:
        return f.read()


def one_real_entry(binary, data_dir):
    """The journal line of one agent leaf issued by the server itself."""
    server = Meshca(binary, data_dir)
    try:
        http("GET", server.base + "/v1/agent/connect/ca/leaf/web", headers=server.token)
    finally:
        server.stop()
    with open(segment(os.path.join(data_dir, JOURNAL), 1), "rb") as f:
        return f.read().split(b"\n")[0] + b"\n"


def segment(journal, number):
    return os.path.join(journal, f"issued-{number:06d}.jsonl")


def write_journal(journal, first_line, records):
    """The server's own line, then `records` entries like it, in segments
    of the server's size (rewriting the first, whose fill the server wrote
    ahead); returns the bytes written."""
    entry = json.loads(first_line)
    service_prefix = entry["SPIFFEID"].rsplit("/", 1)[0]
    number = 1
    out = open(segment(journal, number), "wb")
    out.write(first_line)
    size = total = len(first_line)
    for i in range(records):
        entry["Serial"] = ":".join(f"{b:02x}" for b in (i + 1).to_bytes(16, "big"))
        entry["SPIFFEID"] = f"{service_prefix}/svc-{i}"
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        if size + len(line) > SEGMENT_BYTES:
            out.close()
            number += 1
            out = open(segment(journal, number), "wb")
            size = 0
        out.write(line)
        size += len(line)
        total += len(line)
    out.close()
    os.sync()
    return total


def measure(binary, data_dir, starts, rotations):
    ready, first, later = [], [], []
    for _ in range(starts):
        server = Meshca(binary, data_dir)
        try:
            ready.append(server.ready_ms)
            times = [server.rotate() for _ in range(rotations)]
        finally:
            server.stop()
        first.append(times[0])
        later += times[1:]
    return ready, first, later


def ms(values):
    return ", ".join(f"{v:.1f}" for v in values)


def row(label, result):
    ready, first, later = result
    return (f"| {label} | {ms(ready)} | {ms(first)} | {statistics.median(later):.1f} "
            f"/ {max(later):.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meshca", default=os.path.join(REPO, "target/release/meshca"))
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--rotations", type=int, default=6)
    args = ap.parse_args()
    if args.rotations < 2:
        ap.error("--rotations must be at least 2")
    with tempfile.TemporaryDirectory(prefix="meshca-startup-") as work:
        data_dir = os.path.join(work, "data")
        journal = os.path.join(data_dir, JOURNAL)
        first_line = one_real_entry(args.meshca, data_dir)
        written = write_journal(journal, first_line, args.records)
        print(f"wrote {args.records} journal entries ({written / 1e6:.0f} MB, "
              f"{len(os.listdir(journal))} segments)", file=sys.stderr)
        full = measure(args.meshca, data_dir, args.starts, args.rotations)
        shutil.rmtree(journal)
        os.mkdir(journal, 0o700)
        empty = measure(args.meshca, data_dir, args.starts, args.rotations)
    print(f"{args.starts} starts, {args.rotations} rotations each (EC P-384 and P-256 in turn)\n")
    print("| journal | launch to ready, ms | first rotation after the start, ms "
          "| later rotations, median / max ms |")
    print("|---|---|---|---|")
    print(row(f"{args.records:,} entries".replace(",", " "), full))
    print(row("empty", empty))


if __name__ == "__main__":
    main()
