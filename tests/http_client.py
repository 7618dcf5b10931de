#!/usr/bin/env python3
"""A Dialpad-like sender for tests/http.rs: POSTs one signed call event per request, each on
a new connection, from several threads, and prints "<call_id> <status>" for each (status 0
when no answer came: connection refused or reset, timeout).

usage: http_client.py URL SECRET FIRST_CALL_ID COUNT THREADS
"""
import base64
import hashlib
import hmac
import http.client
import json
import sys
import threading
import urllib.parse


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims: dict, secret: str) -> str:
    """A compact HS256 JWT, as Dialpad signs a subscription's events."""
    signing_input = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def post(url: urllib.parse.SplitResult, body: str) -> int:
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("POST", url.path, body=body, headers={"Content-Type": "application/jwt"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def main() -> None:
    url, secret, first, count, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    target = urllib.parse.urlsplit(url)
    results = []
    lock = threading.Lock()

    def run(k: int) -> None:
        for call_id in range(first + k, first + count, threads):
            claims = {"call_id": call_id, "state": "ringing", "direction": "inbound", "event_timestamp": 1000}
            status = post(target, sign(claims, secret))
            with lock:
                results.append((call_id, status))

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for call_id, status in results:
        print(call_id, status)


if __name__ == "__main__":
    main()
