#!/usr/bin/env python3
"""Lints each certificate file given with pkilint's RFC 5280 linter.

Findings at WARNING or above fail, except pkilint's `pkix.invalid_uri_syntax`
for `spiffe://` URIs: pkilint does not know the scheme, so exactly that
finding is filtered. Exit status 1 lists the remaining findings.
"""
import json
import subprocess
import sys


def findings(path):
    out = subprocess.run(
        [sys.executable, "-m", "pkilint.bin.lint_pkix_cert", "lint", "-s", "WARNING", "-f", "JSON", path],
        capture_output=True, text=True, check=False,
    )
    if not out.stdout.strip():
        raise SystemExit(f"pkilint produced no output for {path}: {out.stderr}")
    for result in json.loads(out.stdout)["results"]:
        for f in result["finding_descriptions"]:
            spiffe_uri = f["code"] == "pkix.invalid_uri_syntax" and 'Invalid URI syntax: "spiffe://' in (f.get("message") or "")
            if not spiffe_uri:
                yield f"{path}: {result['validator']} {f['severity']} {f['code']} {f.get('message')}"


def main():
    bad = [f for path in sys.argv[1:] for f in findings(path)]
    for line in bad:
        print(line)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
