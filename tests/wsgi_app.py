"""A WSGI application for the SCGI and uWSGI tests: it answers with the
CGI variables it got and a digest of the body (served by uWSGI itself,
or by flup's SCGI server: `python3 wsgi_app.py scgi SOCKET`)."""

import hashlib
import sys
from urllib.parse import parse_qs

KEYS = ["REQUEST_METHOD", "REQUEST_URI", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
        "SERVER_PROTOCOL", "REMOTE_ADDR", "SERVER_PORT", "HTTP_USER_AGENT", "HTTP_COOKIE", "SET_ONE"]


def application(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    status = q.get("status", "200") + " Whatever"
    headers = [("Content-Type", "text/plain"), ("X-App", "wsgi")]
    if "loc" in q:
        status = "302 Found"
        headers.append(("Location", q["loc"]))
    start_response(status, headers)
    lines = ["%s=%s" % (k, environ.get(k, "-")) for k in KEYS]
    lines.append("BODY=%d:%s" % (len(body), hashlib.md5(body).hexdigest()))
    out = ("\n".join(lines) + "\n").encode()
    return [out, b"0123456789abcdef" * int(q.get("n", "0"))]


if __name__ == "__main__" and sys.argv[1] == "scgi":
    from flup.server.scgi import WSGIServer
    # Any worker user may connect (ngxr's workers run as nobody under root).
    WSGIServer(application, bindAddress=sys.argv[2], umask=0, debug=False).run()
