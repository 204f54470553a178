#!/usr/bin/env python3
"""A second, independent X.509 chain verifier for meshca's end-to-end tests.

Usage: verify_chain.py ROOTS_PEM INTERMEDIATES_PEM LEAF_PEM [--server-name DNS]

Verifies the certificate in LEAF_PEM against the trust anchors in ROOTS_PEM,
with the certificates in INTERMEDIATES_PEM (may be empty) as untrusted
helpers. It uses pyca/cryptography's Rust path builder (>= 43), which shares
no code with OpenSSL, so a chain that passes both is not an artefact of one
implementation's leniency.

meshca's leaves carry a URI SAN only, so the client verifier (which needs no
name and checks the clientAuth EKU) is always run. With --server-name the
server verifier also runs, checking serverAuth and that DNS name.

Exit status 0 when every verification succeeds; 1 with the error on stderr
otherwise; 2 on bad usage.
"""

import sys

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    if not data.strip():
        return []
    return x509.load_pem_x509_certificates(data)


def main(argv):
    args = argv[1:]
    server_name = None
    if "--server-name" in args:
        i = args.index("--server-name")
        if i + 1 >= len(args):
            print("--server-name needs a value", file=sys.stderr)
            return 2
        server_name = args[i + 1]
        del args[i : i + 2]
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    roots_path, intermediates_path, leaf_path = args
    roots = load(roots_path)
    intermediates = load(intermediates_path)
    leaves = load(leaf_path)
    if not roots:
        print("no root certificates given", file=sys.stderr)
        return 1
    if len(leaves) != 1:
        print(f"expected exactly one leaf certificate, got {len(leaves)}", file=sys.stderr)
        return 1
    leaf = leaves[0]
    builder = PolicyBuilder().store(Store(roots))
    try:
        client = builder.build_client_verifier().verify(leaf, intermediates)
        if not client.chain or client.chain[-1] not in roots:
            print("client chain does not end at a trusted root", file=sys.stderr)
            return 1
        if server_name is not None:
            server = builder.build_server_verifier(x509.DNSName(server_name))
            server.verify(leaf, intermediates)
    except Exception as e:  # VerificationError, or a ValueError on bad input
        print(f"verification failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
