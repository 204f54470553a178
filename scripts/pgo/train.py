#!/usr/bin/env python3
"""The workload a profile-guided build of meshca learns from.

Starts the instrumented binary (data on disk, ACLs and rate limits off, as
the benchmark runs it) and sends it what a mesh sends a CA, over keep-alive
connections at 1, 16 and 64 at once: CSR signing, agent leaves for new
services and for one already cached, the trust bundle (API and agent), and
the CA configuration. Then stops it with SIGTERM: the profile is written
when the process exits.

The proportions matter more than the counts: the compiler lays out and
inlines for the paths this run takes most, and treats the rest as cold.
Rotation, ACLs and the error paths are rare in a running mesh and stay out.

Used by scripts/pgo/build; on its own:
    python3 scripts/pgo/train.py --meshca target/pgo-generate/release/meshca
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from compare import http, make_csr, start_meshca  # noqa: E402
from instructions import load  # noqa: E402


def train(binary, scale):
    with tempfile.TemporaryDirectory(prefix="meshca-pgo-") as work:
        server, base, trust_domain = start_meshca(work, binary)
        try:
            port = int(base.rsplit(":", 1)[1])
            csr = make_csr(work, f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/web")
            sign = json.dumps({"CSR": csr}).encode()
            http("GET", base + "/v1/agent/connect/ca/leaf/cached")
            for conns in (1, 16, 64):
                n = scale * conns
                load(port, "/v1/connect/ca/sign", 4 * n, conns, sign)
                load(port, "/v1/agent/connect/ca/leaf/svc-{n}", 4 * n, conns)
                load(port, "/v1/agent/connect/ca/leaf/cached", 4 * n, conns)
                load(port, "/v1/connect/ca/roots", 4 * n, conns)
                load(port, "/v1/agent/connect/ca/roots", n, conns)
                load(port, "/v1/connect/ca/configuration", n, conns)
        finally:
            server.stop()
        if server.proc.returncode != 0:
            raise SystemExit(f"meshca exited with {server.proc.returncode}: no profile written")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meshca", required=True, help="the instrumented binary")
    ap.add_argument("--scale", type=int, default=25, help="requests per connection and call, /4")
    args = ap.parse_args()
    train(os.path.abspath(args.meshca), args.scale)


if __name__ == "__main__":
    main()
