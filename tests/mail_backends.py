#!/usr/bin/env python3
"""Independent servers for ngxr's mail proxy tests (standard library only).

    python3 tests/mail_backends.py auth CONFIG LOG   an nginx auth_http server
    python3 tests/mail_backends.py smtp CONFIG LOG   an SMTP server (XCLIENT,
                                                     AUTH PLAIN, MAIL, RCPT,
                                                     DATA)

Each prints "PORT <n>" once listening on 127.0.0.1 (an ephemeral port) and
appends one JSON line per request (auth: the request's headers) or command
(smtp: ["CMD", "line"]) to LOG, flushed at once.

CONFIG is JSON:
  {"users": {"alice": "wonderland", ...},     # name -> password
   "routes": {"imap": "127.0.0.1:N", ...},    # Auth-Protocol -> backend
   "wait": 1}                                 # Auth-Wait on refusals

The auth server follows nginx's protocol: Auth-Method plain (password),
apop (md5(salt + password)), cram-md5 (hmac-md5(password, salt)), external
(a known user, no password), none (SMTP: any RCPT TO at example.com). A
good login gets Auth-Status OK, Auth-Server and Auth-Port from "routes",
and Auth-Pass with the real password (so APOP, CRAM-MD5 and EXTERNAL can
log in to the backend). Special users:
  down     OK, but routed to a port nothing listens on
  garbage  an answer without Auth-Status
  nowait   refused without Auth-Wait (the session ends)
  slow     never answered (auth_http_timeout)
  wrongpw  OK with a wrong Auth-Pass (the backend refuses)
"""
import hashlib
import hmac
import json
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE, CONFIG, LOG = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
USERS = CONFIG.get("users", {})
ROUTES = CONFIG.get("routes", {})
LOCK = threading.Lock()


def log(entry):
    with LOCK, open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Auth(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *a):
        pass

    def answer(self, headers):
        self.send_response(200)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        h = {k.lower(): v for k, v in self.headers.items()}
        log({"path": self.path, "headers": h})
        method = h.get("auth-method", "")
        user = urllib.parse.unquote(h.get("auth-user", ""))
        given = urllib.parse.unquote(h.get("auth-pass", ""))
        salt = h.get("auth-salt", "").strip()
        proto = h.get("auth-protocol", "")
        if user == "slow":
            time.sleep(30)
            return
        if user == "garbage":
            self.answer([("X-Nothing", "here")])
            return
        real = USERS.get(user)
        if method == "plain":
            ok = real is not None and given == real
        elif method == "apop":
            ok = real is not None and given == hashlib.md5((salt + real).encode()).hexdigest()
        elif method == "cram-md5":
            ok = real is not None and hmac.compare_digest(given, hmac.new(real.encode(), salt.encode(), hashlib.md5).hexdigest())
        elif method == "external":
            ok = real is not None
        elif method == "none":
            ok = "example.com" in h.get("auth-smtp-to", "")
        else:
            ok = False
        if user == "nowait":
            self.answer([("Auth-Status", "Go away")])
            return
        if not ok:
            self.answer([("Auth-Status", "Invalid login or password"), ("Auth-Wait", str(CONFIG.get("wait", 1))), ("Auth-Error-Code", "535 5.7.8")])
            return
        host, port = ROUTES[proto].rsplit(":", 1)
        if user == "down":
            port = str(closed_port())
        headers = [("Auth-Status", "OK"), ("Auth-Server", host), ("Auth-Port", port)]
        if real is not None:
            headers.append(("Auth-Pass", "not-" + real if user == "wrongpw" else real))
        self.answer(headers)


class Smtp(socketserver.StreamRequestHandler):
    """Enough SMTP to take a message: replies as Postfix does."""

    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self):
        self.reply("220 backend.test ESMTP")
        authed = False
        while True:
            line = self.rfile.readline()
            if not line:
                return
            line = line.decode("latin-1").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            log([verb, line])
            if verb == "EHLO":
                self.reply("250-backend.test\r\n250-XCLIENT ADDR LOGIN NAME\r\n250-AUTH PLAIN\r\n250 8BITMIME")
            elif verb == "HELO":
                self.reply("250 backend.test")
            elif verb == "XCLIENT":
                self.reply("220 backend.test ESMTP")
            elif verb == "AUTH":
                parts = line.split(" ")
                import base64
                try:
                    _, u, p = base64.b64decode(parts[2]).decode().split("\0")
                except Exception:
                    self.reply("501 5.5.2 bad AUTH")
                    continue
                if USERS.get(u) == p:
                    authed = True
                    self.reply("235 2.7.0 Authentication successful")
                else:
                    self.reply("535 5.7.8 Error: authentication failed")
            elif verb == "MAIL":
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                body = []
                while True:
                    l = self.rfile.readline()
                    if not l or l in (b".\r\n", b".\n"):
                        break
                    body.append(l.decode("latin-1"))
                log(["MESSAGE", "".join(body)])
                self.reply("250 2.0.0 Ok: queued as 1")
            elif verb == "RSET" or verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")


class TCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


if MODE == "auth":
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Auth)
    srv.daemon_threads = True
else:
    srv = TCP(("127.0.0.1", 0), Smtp)
print("PORT", srv.server_address[1], flush=True)
srv.serve_forever()
