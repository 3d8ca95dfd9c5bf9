#!/usr/bin/env python3
"""An HTTP front for ClickHouse 26's engine (PyPI chdb-core), so the real `worker` and
`kubectl-dr` binaries can run against a modern ClickHouse where no clickhouse-server 26
package can be installed. It is the *engine*, not clickhouse-server: clusters, Keeper and
the server's own HTTP details stay covered by the Debian 18.16 server.

It speaks the part of ClickHouse's HTTP interface the tools use:
- POST with SQL in the body, or `?query=` with the data in the body (INSERT … FORMAT X);
  other URL parameters are settings for that query;
- basic auth (or X-ClickHouse-User/-Key, or user/password parameters) against one user;
- 200 with the result, streamed with chunked encoding for SELECTs (with
  `wait_end_of_query=1`, buffered first, so a failure is an error status instead); an error before the
  first byte is a 500 (403 for authentication) with ClickHouse's own `Code: N.
  DB::Exception` text and the X-ClickHouse-Exception-Code header; an error after it is
  written in the 25.11+ envelope announced by X-ClickHouse-Exception-Tag:
  `__exception__<tag>\\n<message>\\n<len> <tag>__exception__`.

Fault injection for tests (never on by default): `POST /__fault` with JSON
`{"match": "<text in the SQL>", "mode": "...", "after": <bytes>}` arms a fault for matching
queries; `DELETE /__fault` clears them. Modes, each after `after` bytes of the real result:
- `legacy`: append `Code: 395. DB::Exception: …` text and end the body normally (<= 25.10);
- `tag`: append the 25.11+ exception envelope and end the body normally;
- `cut`: close the connection without the final chunk;
- `engine`: make the engine itself fail mid-result (a throwIf once `after` rows passed).

    chdb-front.py --port 8124 --data DIR --user default --password-file F
"""
import argparse
import base64
import json
import os
import random
import re
import socket
import string
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import chdb.session

LOCK = threading.Lock()
FAULTS = []
SESSION = None
USER = "default"
PASSWORD = ""
TMP = tempfile.gettempdir()

NOT_SETTINGS = {"query", "database", "user", "password", "default_format", "query_id",
                "session_id", "session_timeout", "compress", "decompress", "wait_end_of_query"}
CODE = re.compile(r"Code: (\d+)\.")


def exception_text(e):
    text = str(e)
    i = text.find("Code: ")
    return (text[i:] if i >= 0 else f"Code: 1000. DB::Exception: {text}").strip()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chdb-front"

    def log_message(self, fmt, *args):
        if os.environ.get("CHDB_FRONT_LOG"):
            sys.stderr.write("chdb-front: " + fmt % args + "\n")

    # -- request plumbing -------------------------------------------------------------
    def body_to(self, out):
        """Copies the request body into `out` (a file or a list of bytes)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, 1 << 20))
                    if not data:
                        raise ConnectionError("request body cut")
                    out.write(data)
                    left -= len(data)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, 1 << 20))
                if not data:
                    raise ConnectionError("request body cut")
                out.write(data)
                left -= len(data)

    def reply(self, status, body, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def fail(self, e, status=500):
        text = exception_text(e)
        code = CODE.search(text)
        if code and code.group(1) in ("516", "192", "193", "194"):
            status = 403
        self.reply(status, (text + "\n").encode(),
                   [("X-ClickHouse-Exception-Code", code.group(1) if code else "1000")])

    def authorised(self, params):
        user, password = params.get("user", USER), params.get("password", "")
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        if self.headers.get("X-ClickHouse-User"):
            user = self.headers["X-ClickHouse-User"]
            password = self.headers.get("X-ClickHouse-Key", "")
        return user == USER and password == PASSWORD, user

    # -- fault control ----------------------------------------------------------------
    def do_DELETE(self):
        if self.path.startswith("/__fault"):
            FAULTS.clear()
            return self.reply(200, b"")
        self.reply(404, b"")

    def do_GET(self):
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if "query" not in params:
            return self.reply(200, b"Ok.\n")
        self.run(params, params["query"].encode(), None)

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        if url.path.startswith("/__fault"):
            chunks = Chunks()
            self.body_to(chunks)
            FAULTS.append(json.loads(chunks.value()))
            return self.reply(200, b"")
        if "query" in params:
            # The body is data for an INSERT … FORMAT X: spooled to a file the engine reads.
            fd, path = tempfile.mkstemp(prefix="chdb-front-", dir=TMP)
            with os.fdopen(fd, "wb") as f:
                self.body_to(f)
            try:
                self.run(params, params["query"].encode(), path)
            finally:
                os.unlink(path)
        else:
            chunks = Chunks()
            self.body_to(chunks)
            self.run(params, chunks.value(), None)

    # -- queries ----------------------------------------------------------------------
    def run(self, params, sql_bytes, data_path):
        ok, user = self.authorised(params)
        if not ok:
            return self.fail(Exception(
                f"Code: 516. DB::Exception: {user}: Authentication failed: password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)"))
        sql = sql_bytes.decode("utf-8", "replace").strip().rstrip(";")
        if data_path is not None:
            m = re.search(r"\bFORMAT\s+(\w+)\s*$", sql, re.IGNORECASE)
            if not m:
                return self.fail(Exception("Code: 62. DB::Exception: an INSERT with data needs FORMAT"))
            sql = sql[:m.start()] + f"FROM INFILE '{data_path}' FORMAT {m.group(1)}"
        fault = next((f for f in FAULTS if f.get("match") and f["match"] in sql), None)
        if fault and fault.get("mode") == "engine":
            sql = re.sub(r"(\s+FORMAT\s+\w+\s*)$",
                         f" WHERE throwIf(rowNumberInAllBlocks() >= {int(fault.get('after', 0))}) = 0\\1",
                         sql, flags=re.IGNORECASE)
        settings = {k: v for k, v in params.items() if k not in NOT_SETTINGS}
        fmt = params.get("default_format", "TabSeparated")
        buffered = params.get("wait_end_of_query") == "1"
        with LOCK:
            try:
                self.with_settings(settings, lambda: self.execute(sql, fmt, fault, buffered))
            except Exception as e:  # an error before any byte was sent
                self.fail(e)

    def with_settings(self, settings, action):
        if not settings:
            return action()
        names = ", ".join("'" + k.replace("'", "") + "'" for k in settings)
        before = SESSION.query(
            f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})",
            "TabSeparated").bytes().decode().splitlines()
        for k, v in settings.items():
            SESSION.query(f"SET {k} = {quote(v)}")
        try:
            return action()
        finally:
            for line in before:
                name, value, changed = line.split("\t")
                SESSION.query(f"SET {name} = {quote(value) if changed == '1' else 'DEFAULT'}")

    def execute(self, sql, fmt, fault, buffered):
        reads = re.match(r"\s*(SELECT|WITH)\b", sql, re.IGNORECASE)
        if not reads:
            result = SESSION.query(sql, fmt).bytes()
            return self.reply(200, result)
        if buffered:
            # The whole result first: any failure, an armed fault included, is an error reply.
            data = b"".join(chunk.bytes() for chunk in SESSION.send_query(sql, fmt))
            if fault and fault.get("mode") in ("legacy", "tag"):
                raise Exception("Code: 395. DB::Exception: Value passed to 'throwIf' function is non-zero (injected by chdb-front). (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)")
            if fault and fault.get("mode") == "cut":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            return self.reply(200, data)
        stream = iter(SESSION.send_query(sql, fmt))
        first = b""
        for chunk in stream:  # the first non-empty chunk decides: 200, or an error reply
            first = chunk.bytes()
            if first:
                break
        tag = "".join(random.choice(string.ascii_uppercase + string.digits) for _ in range(10))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-ClickHouse-Exception-Tag", tag)
        self.end_headers()
        out = Body(self.wfile, fault)
        try:
            out.write(first)
            for chunk in stream:
                out.write(chunk.bytes())
        except Cut:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        except Exception as e:  # after the 200: the 25.11+ envelope
            message = exception_text(e)
            out.raw(f"__exception__{tag}\n{message}\n{len(message)} {tag}__exception__\n".encode())
        else:
            if not out.faulted and fault and fault.get("mode") in ("legacy", "tag", "cut"):
                out.inject()  # the result was shorter than `after`
        out.raw(b"", last=True)


class Cut(Exception):
    pass


class Body:
    """The chunked response body, with the armed fault applied after `after` bytes."""

    def __init__(self, wfile, fault):
        self.wfile, self.fault, self.sent, self.faulted = wfile, fault, 0, False

    def raw(self, data, last=False):
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        if last:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def write(self, data):
        f = self.fault
        if f and f.get("mode") in ("legacy", "tag", "cut") and not self.faulted:
            room = int(f.get("after", 0)) - self.sent
            if len(data) >= room:
                self.raw(data[:max(room, 0)])
                self.sent += max(room, 0)
                self.inject()
                return
        self.raw(data)
        self.sent += len(data)

    def inject(self):
        self.faulted = True
        mode = self.fault["mode"]
        message = "Code: 395. DB::Exception: Value passed to 'throwIf' function is non-zero (injected by chdb-front). (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)"
        if mode == "cut":
            raise Cut()
        if mode == "legacy":
            self.raw((message + " (version 24.8.1)\n").encode())
        else:
            tag = "INJECTED00"
            self.raw(f"__exception__{tag}\n{message}\n{len(message)} {tag}__exception__\n".encode())
        # The rest of the real result is dropped, as a failing server would.
        self.write = lambda data: None


class Chunks:
    def __init__(self):
        self.parts = []

    def write(self, data):
        self.parts.append(data)

    def value(self):
        return b"".join(self.parts)


def quote(v):
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def main():
    global SESSION, USER, PASSWORD, TMP
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data", required=True, help="directory of the engine's databases")
    p.add_argument("--user", default="default")
    p.add_argument("--password-file")
    args = p.parse_args()
    USER = args.user
    if args.password_file:
        with open(args.password_file) as f:
            PASSWORD = f.read().strip()
    os.makedirs(args.data, exist_ok=True)
    TMP = os.path.join(args.data, "tmp")
    os.makedirs(TMP, exist_ok=True)
    SESSION = chdb.session.Session(os.path.join(args.data, "db"))
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    version = SESSION.query("SELECT version()", "TabSeparated").bytes().decode().strip()
    print(f"chdb-front: ClickHouse {version} engine on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
