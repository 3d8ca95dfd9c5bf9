#!/usr/bin/env python3
"""A faulty front for an S3 server, for the tests: what busy S3 and flaky networks do.

Forwards every request to the upstream S3 server unchanged (headers included, so SigV4
signatures still match) and, at the rates given, instead:
  - answers 503 SlowDown without forwarding (S3 under load);
  - resets the connection without forwarding (a dropped connection);
  - forwards the request, then resets the connection without answering (the answer of a
    request that *did* happen is lost: a retried CompleteMultipartUpload then meets
    NoSuchUpload, a retried PUT of a manifest finds it there);
  - forwards, answers the status and headers, sends half the body, and closes (a cut body).

`--lose-once REGEX` loses the answer of the first request that matches (e.g.
'^POST .*uploadId=' for a CompleteMultipartUpload). `--full-after BYTES` answers 507
Insufficient Storage (as MinIO does when its drives are full) to every write once the
request bodies forwarded reach BYTES. A `Location` header naming the upstream (a GCS
resumable session) is rewritten to name the front, so the session's requests pass it too.
Any HTTP store works behind it (Azurite, fake-gcs-server). Deterministic for a seed. Prints `listening on PORT` once ready; counts each fault and
prints the counts on SIGTERM / SIGINT (and to --stats-file after every request).

    scripts/faulty-s3.py --upstream 127.0.0.1:9000 --port 0 --slowdown 0.15 --cut 0.05 \
        --reset 0.02 --lost 0.03 --seed 7
"""

import argparse
import http.client
import http.server
import json
import random
import signal
import socket
import socketserver
import struct
import sys
import threading

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "expect"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the real S3 server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--slowdown", type=float, default=0.0)
    ap.add_argument("--reset", type=float, default=0.0)
    ap.add_argument("--lost", type=float, default=0.0)
    ap.add_argument("--cut", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--lose-once",
        action="append",
        default=[],
        metavar="REGEX",
        help="lose the answer of the first request whose 'METHOD PATH' matches (repeatable)",
    )
    ap.add_argument("--full-after", type=int, default=-1, metavar="BYTES")
    ap.add_argument("--stats-file")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    lock = threading.Lock()
    counts = {"requests": 0, "slowdown": 0, "reset": 0, "lost": 0, "cut": 0, "clean": 0, "full": 0}
    written = [0]
    front = {}
    up_host, up_port = args.upstream.rsplit(":", 1)

    import re

    once = [re.compile(r) for r in args.lose_once]

    def decide(line):
        with lock:
            counts["requests"] += 1
            for r in once:
                if r.search(line):
                    once.remove(r)
                    counts["lost"] += 1
                    return "lost"
            r = rng.random()
            for name in ("slowdown", "reset", "lost", "cut"):
                rate = getattr(args, name)
                if r < rate:
                    counts[name] += 1
                    return name
                r -= rate
            counts["clean"] += 1
            return "clean"

    def save_stats():
        if args.stats_file:
            with lock:
                text = json.dumps(counts)
            with open(args.stats_file + ".tmp", "w") as f:
                f.write(text)
            import os

            os.replace(args.stats_file + ".tmp", args.stats_file)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def read_body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length", "0") or 0)
            return self.rfile.read(n) if n else b""

        def reset(self):
            # SO_LINGER 0: the peer sees a reset, not a clean close.
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.connection.close()
            self.close_connection = True

        def handle_any(self):
            body = self.read_body()
            fault = decide(f"{self.command} {self.path}")
            if args.full_after >= 0 and self.command in ("PUT", "POST") and body:
                with lock:
                    if written[0] + len(body) > args.full_after:
                        counts["full"] += 1
                        fault = "full"
                    else:
                        written[0] += len(body)
            try:
                if fault == "full":
                    xml = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>XMinioStorageFull</Code>'
                        b"<Message>Storage backend has reached its minimum free drive threshold.</Message></Error>"
                    )
                    self.send_response(507)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                if fault == "slowdown":
                    xml = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                if fault == "reset":
                    self.reset()
                    return
                conn = http.client.HTTPConnection(up_host, int(up_port), timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    # Sent on as it came: a Content-Length the client did not sign would
                    # break a Shared Key signature (Azure signs that header).
                    headers["Transfer-Encoding"] = "chunked"
                    conn.request(self.command, self.path, body=iter([body] if body else []),
                                 headers=headers, encode_chunked=True)
                else:
                    if not any(k.lower() == "content-length" for k in headers) and body:
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault == "lost":
                    self.reset()
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() == "location":
                        v = v.replace(f"{up_host}:{up_port}", f"127.0.0.1:{front['port']}")
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                # A HEAD answer has no body but the object's length.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if fault == "cut" and len(data) > 1 and self.command == "GET":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.reset()
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                save_stats()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", args.port), Handler)
    front["port"] = server.server_address[1]

    def stop(*_):
        with lock:
            print(json.dumps(counts), file=sys.stderr, flush=True)
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
