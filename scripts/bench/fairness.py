#!/usr/bin/env python3
"""Fairness under overload: does one client flooding /sign slow another?

Starts meshca (release build, data on disk, ACLs on, rate limits off) and
makes two tokens with the same service identity: "flood" and "quiet". Then,
each for a bounded time on 127.0.0.1:
  1. quiet alone: one connection signing a P-256 CSR in a loop;
  2. the same while flood signs on many connections at once.
Reports quiet's p50/p99 in both and the ratio loaded ÷ alone, flood's
requests/s and non-2xx answers. Give --meshca another binary to compare
builds (run each in turn, in one window: the machine is shared).

`scripts/bench/run fairness [args]` installs what this needs and builds
meshca first.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (REPO, SERVICE, WRK_SCRIPT, Server, free_port, http,  # noqa: E402
                     make_csr, wait_until, write_body)


def start_meshca(workdir, binary, cpus=None):
    port = free_port()
    management = str(uuid.uuid4())
    config = os.path.join(workdir, "meshca.json")
    with open(config, "w") as f:
        json.dump({
            "acl": {"enabled": True, "tokens": {"initial_management": management}},
            "connect": {"ca_config": {"csr_max_per_second": 0, "csr_max_concurrent": 0}},
        }, f)
    pin = ["taskset", "-c", cpus] if cpus else []
    server = Server("meshca", pin + [binary, "server", "--data-dir", os.path.join(workdir, "meshca-data"),
                               "--client", "127.0.0.1", "--http-port", str(port),
                               "--config-file", config], workdir)
    base = f"http://127.0.0.1:{port}"
    wait_until("meshca", lambda: http("GET", base + "/v1/connect/ca/roots"))
    return server, base, management


def service_token(base, management, name):
    body = {"Description": name, "ServiceIdentities": [{"ServiceName": SERVICE}]}
    out = http("PUT", base + "/v1/acl/token", body, {"X-Consul-Token": management})
    return json.loads(out)["SecretID"]


def start_wrk(url, conns, seconds, body_file, token, cpus=None):
    env = dict(os.environ, BENCH_METHOD="POST", BENCH_BODY_FILE=body_file,
               BENCH_HEADER=f"X-Consul-Token: {token}", BENCH_UNIQUE_PATH="0")
    pin = ["taskset", "-c", cpus] if cpus else []
    return subprocess.Popen(pin + ["wrk", "-t", str(min(2, conns)), "-c", str(conns), "-d", f"{seconds}s",
                             "--timeout", "10s", "-s", WRK_SCRIPT, url],
                            stdout=subprocess.PIPE, text=True, env=env)


def signing_paces(base, management):
    """The server's count of signings by pace (batched, prompt, background)."""
    text = http("GET", base + "/v1/agent/metrics?format=prometheus", None,
                {"X-Consul-Token": management}).decode()
    paces = {}
    for line in text.splitlines():
        if line.startswith('meshca_leaf_signings_paced_total{pace="'):
            name = line.split('"')[1]
            paces[name] = int(float(line.rsplit(" ", 1)[1]))
    return paces


def result(proc):
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}")
    line = next(l for l in out.splitlines() if l.startswith("BENCH "))
    r = json.loads(line[len("BENCH "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meshca", default=os.path.join(REPO, "target/release/meshca"))
    ap.add_argument("--seconds", type=int, default=5, help="per phase (default 5)")
    ap.add_argument("--flood-conns", type=int, default=64)
    ap.add_argument("--server-cpus", help="pin meshca to these CPUs (taskset list), e.g. 0")
    ap.add_argument("--client-cpus", help="pin the load generators to these CPUs, e.g. 1")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()
    args.meshca = os.path.abspath(args.meshca)

    with tempfile.TemporaryDirectory(prefix="meshca-fairness-") as work:
        server, base, management = start_meshca(work, args.meshca, args.server_cpus)
        try:
            flood_token = service_token(base, management, "flood")
            quiet_token = service_token(base, management, "quiet")
            td = json.loads(http("GET", base + "/v1/connect/ca/roots"))["TrustDomain"]
            csr = make_csr(work, f"spiffe://{td}/ns/default/dc/dc1/svc/{SERVICE}")
            body = write_body(work, "sign.json", {"CSR": csr})
            url = base + "/v1/connect/ca/sign"

            alone = result(start_wrk(url, 1, args.seconds, body, quiet_token, args.client_cpus))
            flood = start_wrk(url, args.flood_conns, args.seconds + 2, body, flood_token,
                              args.client_cpus)
            time.sleep(1)  # the flood is at full strength before quiet starts
            loaded = result(start_wrk(url, 1, args.seconds, body, quiet_token, args.client_cpus))
            flooded = result(flood)
            paces = signing_paces(base, management)
        finally:
            server.stop()

    out = {
        "binary": args.meshca, "seconds": args.seconds, "flood_conns": args.flood_conns,
        "quiet_alone": alone, "quiet_loaded": loaded, "flood": flooded,
        "p99_ratio": loaded["p99_us"] / max(alone["p99_us"], 1),
        "signing_paces": paces,
    }
    print(f"| quiet client | req/s | p50 ms | p99 ms | non-2xx |\n|---|---:|---:|---:|---:|")
    for label, r in [("alone", alone), (f"beside a {args.flood_conns}-connection flood", loaded)]:
        print(f"| {label} | {r['rps']:.0f} | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | "
              f"{r['non2xx'] + r['socket_errors']} |")
    print(f"\nquiet p99 loaded ÷ alone: {out['p99_ratio']:.2f}; flood: {flooded['rps']:.0f} req/s, "
          f"p99 {flooded['p99_us'] / 1000:.2f} ms, non-2xx {flooded['non2xx'] + flooded['socket_errors']}")
    print("signings by pace: " + ", ".join(f"{k} {v}" for k, v in sorted(paces.items())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
