#!/usr/bin/env python3
"""An independent HTTP/1.1 backend for ngxr's proxy tests (standard library
only). It is deliberately not ngxr: it answers what real servers answer and
misbehaves on request.

    python3 tests/backend.py NAME   -> prints "PORT <n>" once listening on
                                       127.0.0.1 (ephemeral port)
    python3 tests/backend.py NAME unix:PATH
                                    -> listens on the Unix-domain socket PATH
                                       instead; prints "PORT 0"

Every response carries "X-Backend: NAME" and "X-Conn: <connection serial>".

Paths:
  /bye              answers without "Connection: close", then closes
  /conns            how many TCP connections were accepted so far (text)
  /chunked          a chunked response in three pieces
  /close            a close-delimited body (no length, HTTP/1.0 style)
  /early            claims 100 bytes, sends 10, closes
  /status/N         answers status N with a short body
  /delay?ms=N       waits N ms, then answers
  /stall            sends the head, part of the body, then nothing
  /redirect         Location: http://<Host header>/two/x (for proxy_redirect)
  /big?n=N          N bytes of 'x' with a Content-Length
  /bigchunked?n=N   N bytes of 'y', chunked in 16 KiB pieces
  /ws               WebSocket handshake, then echoes each frame's payload
  /counted/NAME?set=K:V&set=...&status=S&delay=MS
                    "NAME N": how many requests for /counted/NAME (any
                    query) came so far, with each K: V as a response header
                    (answered with status S, after MS milliseconds)
  /validated/NAME   "NAME N" with ETag "v1", a fixed Last-Modified and
                    max-age=1; 304 (not counted in N) when If-None-Match
                    is "v1"; X-Seen-Conditional: yes when any If-* came
  /empty            200 with Content-Length: 0
  /garbage          a response that is not HTTP
  /nohead           closes without answering
  anything else     an echo: JSON of method, target, headers and body
"""
import base64
import hashlib
import json
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = sys.argv[1] if len(sys.argv) > 1 else "backend"
CONNS = 0
LOCK = threading.Lock()
COUNTS = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pybackend"

    def setup(self):
        global CONNS
        super().setup()
        with LOCK:
            CONNS += 1
            self.serial = CONNS

    def log_message(self, *args):
        pass

    def head(self, status, headers, length=None):
        self.send_response(status)
        self.send_header("X-Backend", NAME)
        self.send_header("X-Conn", str(self.serial))
        for k, v in headers:
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def reply(self, status, body, ctype="text/plain", extra=()):
        # A Content-Type among the extra headers replaces the default.
        ctype_hdr = [] if any(k.lower() == "content-type" for k, _ in extra) else [("Content-Type", ctype)]
        self.head(status, [*ctype_hdr, *extra], len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(n) if n else b""

    def handle_any(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        p = url.path
        if p.startswith("/two/"):
            p = p[4:]
        body = self.body()
        if p == "/bye":
            # Answers as if keeping the connection, then closes it.
            self.reply(200, b"bye")
            self.close_connection = True
            return
        if p == "/empty":
            return self.reply(200, b"")
        if p == "/conns":
            return self.reply(200, str(CONNS).encode())
        if p.startswith("/validated/"):
            lm = ("Last-Modified", "Mon, 02 Mar 2015 17:20:58 GMT")
            tag = ("ETag", '"v1"')
            cc = ("Cache-Control", "max-age=1")
            seen = ("X-Seen-Conditional", "yes" if any(k.lower().startswith("if-") for k in self.headers.keys()) else "no")
            if self.headers.get("If-None-Match") == '"v1"':
                self.head(304, [lm, tag, cc, seen])
                return
            with LOCK:
                COUNTS[p] = COUNTS.get(p, 0) + 1
                n = COUNTS[p]
            return self.reply(200, ("%s %d" % (p[len("/validated/"):], n)).encode(), extra=[lm, tag, cc, seen])
        if p.startswith("/counted/"):
            with LOCK:
                COUNTS[p] = COUNTS.get(p, 0) + 1
                n = COUNTS[p]
            extra = [tuple(v.split(":", 1)) for k, v in urllib.parse.parse_qsl(url.query) if k == "set"]
            status = int(q.get("status", "200"))
            time.sleep(int(q.get("delay", "0")) / 1000)
            return self.reply(status, ("%s %d" % (p[len("/counted/"):], n)).encode(), extra=extra)
        if p == "/chunked":
            self.head(200, [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")])
            for piece in (b"one,", b"two,", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.02)
            self.wfile.write(b"0\r\n\r\n")
            return
        if p == "/close":
            self.close_connection = True
            self.send_response(200)
            self.send_header("X-Backend", NAME)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until-close body")
            return
        if p == "/early":
            self.close_connection = True
            self.head(200, [("Content-Type", "text/plain")], 100)
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            return
        if p.startswith("/status/"):
            code = int(p.split("/")[2])
            return self.reply(code, b"backend status %d from %s\n" % (code, NAME.encode()))
        if p == "/delay":
            time.sleep(int(q.get("ms", "100")) / 1000)
            return self.reply(200, b"delayed")
        if p == "/stall":
            self.head(200, [("Content-Type", "text/plain")], 100)
            self.wfile.write(b"partial")
            self.wfile.flush()
            time.sleep(5)
            self.close_connection = True
            return
        if p == "/redirect":
            host = self.headers.get("Host", "")
            return self.reply(302, b"moved", extra=[("Location", "http://%s/two/x" % host)])
        if p == "/big":
            n = int(q.get("n", "1000000"))
            self.head(200, [("Content-Type", "application/octet-stream")], n)
            chunk = b"x" * 65536
            left = n
            while left > 0:
                self.wfile.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
            return
        if p == "/bigchunked":
            n = int(q.get("n", "1000000"))
            self.head(200, [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")])
            left = n
            while left > 0:
                k = min(left, 16384)
                self.wfile.write(b"%x\r\n%s\r\n" % (k, b"y" * k))
                left -= k
            self.wfile.write(b"0\r\n\r\n")
            return
        if p == "/ws":
            return self.websocket()
        if p == "/garbage":
            self.close_connection = True
            self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            return
        if p == "/nohead":
            self.close_connection = True
            return
        if p == "/xaccel":
            # Sends the answer elsewhere (nginx's X-Accel-Redirect).
            return self.reply(200, b"from the backend", extra=[("X-Accel-Redirect", q.get("to", "")), ("Content-Disposition", "attachment")])
        if p.startswith("/framing/"):
            # Response heads with ambiguous or bad framing (nginx answers 502).
            lines = {
                "cl-invalid": ["Content-Length: foo"],
                "cl-twice": ["Content-Length: 0", "Content-Length: 0"],
                "te-unknown": ["Transfer-Encoding: foo"],
                "te-twice": ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
                "cl-and-te": ["Content-Length: 2", "Transfer-Encoding: chunked"],
                "expires-twice": ["Content-Length: 2", "Expires: foo", "Expires: bar"],
            }[p[len("/framing/"):]]
            self.close_connection = True
            head = "HTTP/1.1 200 OK\r\nConnection: close\r\n" + "".join(l + "\r\n" for l in lines) + "\r\n"
            self.wfile.write(head.encode() + b"ok" + (b"\r\n0\r\n\r\n" if "te-twice" in p else b""))
            return
        echo = {
            "backend": NAME,
            "method": self.command,
            "target": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("latin-1"),
        }
        self.reply(200, json.dumps(echo).encode(), "application/json")

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            h = self.rfile.read(2)
            if len(h) < 2:
                return
            op, ln = h[0] & 0x0F, h[1] & 0x7F
            if ln == 126:
                ln = int.from_bytes(self.rfile.read(2), "big")
            elif ln == 127:
                ln = int.from_bytes(self.rfile.read(8), "big")
            mask = self.rfile.read(4) if h[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(ln)))
            if op == 8:
                self.wfile.write(b"\x88\x00")
                return
            reply = b"echo:" + data
            self.wfile.write(bytes([0x80 | op, len(reply)]) + reply)
            self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    if len(sys.argv) > 2 and sys.argv[2].startswith("unix:"):
        srv = UnixServer(sys.argv[2][5:], Handler)
        print("PORT 0", flush=True)
    else:
        srv = Server(("127.0.0.1", 0), Handler)
        print("PORT %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
