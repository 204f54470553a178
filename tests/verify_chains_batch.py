#!/usr/bin/env python3
"""Runs verify_chain.py over many cases in one interpreter.

Usage: verify_chains_batch.py < cases.json

Starting Python and importing `cryptography` costs about a third of a second;
the rotation tests verify dozens of chains, so they batch them here. Each
case is {"name": str, "args": [ROOTS_PEM, INTERMEDIATES_PEM, LEAF_PEM, ...]}
with exactly the arguments of verify_chain.py, whose `main` runs unchanged
for every case. One JSON line per case is printed:
{"name": ..., "code": <verify_chain.py's exit status>, "output": ...}.
"""

import contextlib
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import verify_chain  # noqa: E402  (needs the path above)


def main():
    cases = json.load(sys.stdin)
    for case in cases:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = verify_chain.main(["verify_chain.py"] + list(case["args"]))
            except Exception as e:  # a crash is a failure of that case only
                print(f"verify_chain.py raised {type(e).__name__}: {e}", file=sys.stderr)
                code = 3
        print(json.dumps({"name": case["name"], "code": code, "output": out.getvalue() + err.getvalue()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
