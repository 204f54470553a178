#!/usr/bin/env python3
"""Several meshca servers on etcd: failover time and follower propagation.

Starts a 3-member etcd cluster (Debian's etcd-server) and three meshca
servers (release build) sharing it, all on 127.0.0.1, then measures:
  * propagation: a root rotation through the leader; the time from the
    leader's answer until each follower's blocked roots query
    (?index=…) returns the new root — N rotations, EC P-256 <-> P-384;
  * failover: SIGKILL of the leader; the time until another server names
    itself in /v1/status/leader (the lease is --lease-ttl); K times;
  * handover: SIGTERM of the leader (it resigns); the same time.

`scripts/bench/run ha [args]` builds meshca first.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import REPO, Server, free_port, http, wait_until  # noqa: E402


def start_etcd(work, size=3):
    members = [(f"m{i}", free_port(), free_port()) for i in range(size)]
    cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, _, p in members)
    procs = []
    for name, client, peer in members:
        log = open(os.path.join(work, f"etcd-{name}.log"), "wb")
        procs.append(subprocess.Popen(
            ["etcd", "--name", name, "--data-dir", os.path.join(work, f"etcd-{name}"),
             "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", "meshca-bench", "--log-level", "warn", "--logger", "zap"],
            stdout=log, stderr=subprocess.STDOUT))
    endpoints = [f"http://127.0.0.1:{c}" for _, c, _ in members]
    for e in endpoints:
        wait_until("etcd", lambda e=e: b'"health":"true"' in http("GET", e + "/health"))
    return procs, endpoints


class Meshca:
    def __init__(self, work, name, binary, endpoints, key, ttl):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        config = os.path.join(work, f"{name}.json")
        with open(config, "w") as f:
            json.dump({"acl": {"enabled": False},
                       "store": {"backend": "etcd", "etcd": {"endpoints": endpoints,
                                                             "lease_ttl": ttl}},
                       "encrypt_store": {"key_file": key}}, f)
        self.argv = [binary, "server", "--data-dir", os.path.join(work, f"{name}-data"),
                     "--client", "127.0.0.1", "--http-port", str(self.port), "--config-file", config]
        self.work, self.name = work, name
        self.start()

    def start(self):
        self.server = Server(self.name, self.argv, self.work)
        wait_until(self.name, lambda: http("GET", self.base + "/v1/connect/ca/roots"))

    def leader(self):
        try:
            return json.loads(http("GET", self.base + "/v1/status/leader", timeout=2))
        except OSError:
            return None

    def roots(self):
        return json.loads(http("GET", self.base + "/v1/connect/ca/roots"))


def rotate(leader, bits):
    body = {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": bits}}
    http("PUT", leader.base + "/v1/connect/ca/configuration", body)


def propagation(servers, rounds):
    delays = []
    for i in range(rounds):
        leader = next(s for s in servers if s.leader() == s.address)
        followers = [s for s in servers if s is not leader]
        index = int(urllib_index(leader))
        returned = {}

        def park(f):
            http("GET", f.base + f"/v1/connect/ca/roots?index={index}&wait=30s", timeout=40)
            returned[f.name] = time.monotonic()

        threads = [threading.Thread(target=park, args=(f,)) for f in followers]
        for t in threads:
            t.start()
        time.sleep(0.2)  # the queries are parked
        rotate(leader, 384 if i % 2 == 0 else 256)
        answered = time.monotonic()
        for t in threads:
            t.join()
        delays += [(returned[f.name] - answered) * 1000 for f in followers]
    return delays


def urllib_index(server):
    import urllib.request
    with urllib.request.urlopen(server.base + "/v1/connect/ca/roots") as r:
        return r.headers["X-Consul-Index"]


def failover(servers, times, sig):
    took = []
    for _ in range(times):
        leader = next(s for s in servers if s.leader() == s.address)
        others = [s for s in servers if s is not leader]
        start = time.monotonic()
        leader.server.proc.send_signal(sig)
        while not any(o.leader() == o.address for o in others):
            if time.monotonic() - start > 60:
                raise SystemExit("no new leader within 60 s")
            time.sleep(0.01)
        took.append((time.monotonic() - start) * 1000)
        leader.server.proc.wait()
        leader.server.log.close()
        leader.start()
        time.sleep(1)
    return took


def summary(label, values):
    print(f"| {label} | {len(values)} | {statistics.median(values):.0f} | {min(values):.0f} | "
          f"{max(values):.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meshca", default=os.path.join(REPO, "target/release/meshca"))
    ap.add_argument("--lease-ttl", default="5s")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--failovers", type=int, default=3)
    args = ap.parse_args()
    binary = os.path.abspath(args.meshca)
    with tempfile.TemporaryDirectory(prefix="meshca-ha-") as work:
        etcd, endpoints = start_etcd(work)
        servers = []
        try:
            key = os.path.join(work, "store.key")
            subprocess.run([binary, "keygen", "--out", key], check=True, capture_output=True)
            servers = [Meshca(work, f"meshca{i}", binary, endpoints, key, args.lease_ttl)
                       for i in range(3)]
            wait_until("a leader", lambda: any(s.leader() == s.address for s in servers))
            delays = propagation(servers, args.rounds)
            killed = failover(servers, args.failovers, signal.SIGKILL)
            stopped = failover(servers, args.failovers, signal.SIGTERM)
        finally:
            for s in servers:
                s.server.stop()
            for p in etcd:
                p.kill()
                p.wait()
    print(f"3 etcd members, 3 meshca servers, lease_ttl {args.lease_ttl}; milliseconds\n")
    print("| measurement | n | median | min | max |\n|---|---:|---:|---:|---:|")
    summary("rotation answered by the leader → a follower's blocked roots query returns", delays)
    summary("SIGKILL of the leader → another server names itself leader", killed)
    summary("SIGTERM of the leader (it resigns) → another server names itself leader", stopped)


if __name__ == "__main__":
    main()
