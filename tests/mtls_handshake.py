"""One mutual-TLS handshake between two leaf certificates on 127.0.0.1.

usage: mtls_handshake.py SERVER_CERT SERVER_KEY CLIENT_CERT CLIENT_KEY ROOTS

Each CERT file holds the leaf followed by its chain, as meshca serves it.
Both sides require and verify the other's certificate against ROOTS alone
(strict X.509 checks; SPIFFE leaves carry no DNS name, so no hostname
check). Prints a JSON object naming the URI SAN each side saw; exits 1 when
either side fails.
"""

import json
import socket
import ssl
import sys
import threading


def context(side, cert, key, roots):
    proto = ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(proto)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(roots)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def uris(peer):
    return [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]


def main():
    server_cert, server_key, client_cert, client_key, roots = sys.argv[1:6]
    server = context("server", server_cert, server_key, roots)
    client = context("client", client_cert, client_key, roots)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    result = {}

    def serve():
        try:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True) as s:
                result["server_saw"] = uris(s.getpeercert())
                s.sendall(b"ok")
        except Exception as e:  # reported below, the test shows it
            result["server_error"] = repr(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with client.wrap_socket(raw) as s:
                result["client_saw"] = uris(s.getpeercert())
                result["data"] = s.recv(2).decode()
    except Exception as e:
        result["client_error"] = repr(e)
    t.join(10)
    print(json.dumps(result))
    ok = "server_saw" in result and "client_saw" in result and result.get("data") == "ok"
    sys.exit(0 if ok else 1)


main()
