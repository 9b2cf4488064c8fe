#!/usr/bin/env python3
"""ngxr against nginx, side by side, in one run (called by bench/run).

Both servers get the same files, one worker, access_log off, sendfile on,
and listen on 127.0.0.1. For every scenario wrk runs once on each to warm
up (not counted), then on both in turns, --rounds times, in the order
A B, B A, A B... so a steady drift of the machine cancels and neither
server always goes first; the table shows the median of the rounds. The
last scenario measures the worker's resident memory holding 10,000 idle
keepalive connections.

Nothing here is a test: it prints figures, it does not judge them.
"""

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            sys.exit(f"{what} exited with {proc.returncode} before listening: {err}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {deadline}s")


COMMON_HTTP = """
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 1000;
    default_type text/plain;
    # The pool holds as many idle connections as wrk has (c50): with
    # fewer (nginx's example value, 32), the 50 requests in flight drain it
    # and refill it past its size in turns, and the row measured upstream
    # connects and closes (10 % of requests for ngxr, 3 % for nginx: the
    # faster proxy hands the backend more requests at once) more than it
    # measured proxying. See docs/performance.md.
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        location /proxy/ {{
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def ngxr_conf(d, port, backend):
    mods = "".join(
        f"load_module {os.path.join(REL, f'libngxr_{m}.so')};\n" for m in ["static", "log", "proxy"]
    )
    return (
        mods
        + f"""worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
error_log {d}/ngxr-error.log warn;
pid {d}/ngxr.pid;
events {{ worker_connections 12000; }}
http {{"""
        + COMMON_HTTP.format(port=port, root=f"{d}/html", backend=backend)
        + "}\n"
    )


def nginx_conf(d, port, backend):
    temps = "".join(
        f"    {t}_temp_path {d}/nginx-tmp/{t};\n"
        for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    )
    return (
        f"""worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
error_log {d}/nginx-error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 12000; }}
http {{
{temps}"""
        + COMMON_HTTP.format(port=port, root=f"{d}/html", backend=backend)
        + "}\n"
    )


# CPU placement (bench/run --pin on): the servers under test on one CPU,
# wrk and the proxy's backend on another, so the two never contend for a
# core. Both servers get the same placement. Off by default: measured on
# the 2-CPU machine of README, it did not make rounds repeat more closely,
# and it caps every row where wrk's CPU is the limit (the 4 KiB row went
# from 2.18 to 1.65) since a server's spare time no longer goes to wrk.
# None leaves placement to the scheduler.
PIN = {"server": None, "client": None}


def pinned(role):
    cpu = PIN[role]
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


class Server:
    def __init__(self, name, argv, port, cwd, role="server"):
        self.name, self.port = name, port
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=pinned(role))
        wait_port(port, self.proc, name)

    def worker_pid(self):
        """The worker: the master's only child (or the process itself)."""
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    kids = f.read().split()
                if kids:
                    return int(kids[0])
            except OSError:
                pass
            time.sleep(0.05)
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wrk_out(port, path, secs, conns, close=False):
    """Runs wrk (one thread) and returns what it printed."""
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    return subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60,
                          preexec_fn=pinned("client")).stdout


def busy_ticks():
    """CPU time spent busy (not idle or waiting on I/O) by the whole
    machine so far, in clock ticks."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is
    # already inside user and nice)
    return sum(t[:8]) - t[3] - t[4]


def proc_ticks(pid):
    """User and system CPU time of one process so far, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children_secs():
    """CPU seconds used by the waited-for children of this script (wrk)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wrk(port, path, secs, conns, close=False, worker=None):
    """A dict: rps, p99 (ms), cpu (µs per request, the whole machine's busy
    time: server, wrk, backend, kernel), worker (µs per request charged to
    the server's worker process, if given), client (wrk's CPU as a share
    of one CPU over the run), note. Where wrk's own CPU is the limit
    (client near 1.0), requests/s cannot tell the servers apart; the work
    each request costs still does."""
    t0, w0, c0, wall0 = busy_ticks(), worker and proc_ticks(worker), children_secs(), time.monotonic()
    out = wrk_out(port, path, secs, conns, close)
    busy = busy_ticks() - t0
    wticks = worker and proc_ticks(worker) - w0
    client = (children_secs() - c0) / (time.monotonic() - wall0)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    if not rps or not p99 or not total or int(total.group(1)) == 0:
        sys.exit(f"cannot read wrk's output:\n{out}")
    n = int(total.group(1))
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    note = ""
    if errors:
        note += f" non-2xx={errors.group(1)}"
    if sock_err:
        note += f" socket errors: {sock_err.group(1)}"
    return {"rps": float(rps.group(1)), "p99": float(p99.group(1)) * scale, "cpu": busy * tick_us / n,
            "worker": wticks * tick_us / n if worker else 0.0, "client": client, "note": note}


def idle_rss(port, pid, n):
    """Opens n keepalive connections, one request each, and reads the
    worker's VmRSS while they idle; returns (baseline KiB, loaded KiB)."""

    def rss():
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    base = rss()
    socks = []
    req = b"GET /13b.txt HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(req)
            socks.append(s)
        for s in socks:
            got = b""
            while b"Hello, world\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("connection closed before its response")
                got += chunk
        time.sleep(0.5)  # let the worker settle (not a readiness wait)
        return base, rss()
    finally:
        for s in socks:
            s.close()


def callgrind_total(path):
    """The instruction total of a callgrind dump."""
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    sys.exit(f"no totals in {path}")


def instructions(d, name, argv, conf_text, port, path, secs, close):
    """User-space instructions per request of a one-process server run
    under callgrind (master_process off), for `secs` of wrk -c10: exact
    where wall-clock figures drift. Kernel work (syscalls) is not counted."""
    conf = f"{d}/{name}-cg.conf"
    with open(conf, "w") as f:
        f.write(conf_text.replace("daemon off;", "daemon off;\nmaster_process off;", 1))
    out = f"{d}/{name}.callgrind"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + argv + ["-c", conf],
                            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc, f"{name} under valgrind", deadline=120)
        # Warm up (the open-file cache, the upstream pool), then count.
        wrk_out(port, path, 1, 10, close)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, timeout=60)
        res = wrk_out(port, path, secs, 10, close)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, timeout=60)
        n = re.search(r"(\d+) requests in", res)
        if not n or int(n.group(1)) == 0:
            sys.exit(f"cannot read wrk's output:\n{res}")
        return callgrind_total(f"{out}.1") / int(n.group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


SCENARIOS = [
    ("13-byte file, keepalive, c50", "/13b.txt", 50, False),
    ("13-byte file, Connection: close, c50", "/13b.txt", 50, True),
    ("4 KiB file, keepalive, c50", "/4k.bin", 50, False),
    ("1 MiB file (sendfile), keepalive, c50", "/1m.bin", 50, False),
    ("proxy, upstream keepalive, c50", "/proxy/x", 50, False),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--only", help="run scenarios whose name contains this")
    ap.add_argument("--pin", choices=["on", "off"], default="off",
                    help="servers on one CPU, wrk and the backend on another (needs 2 CPUs)")
    ap.add_argument("--instructions", action="store_true",
                    help="count user-space instructions per request under callgrind instead of timing")
    a = ap.parse_args()
    if a.pin == "on":
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            sys.exit("--pin on needs two CPUs")
        PIN["server"], PIN["client"] = cpus[0], cpus[1]

    d = tempfile.mkdtemp(prefix="ngxr-bench-")
    os.chmod(d, 0o755)
    os.makedirs(f"{d}/html")
    for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]:
        os.makedirs(f"{d}/nginx-tmp/{t}")
    with open(f"{d}/html/13b.txt", "wb") as f:
        f.write(b"Hello, world\n")
    with open(f"{d}/html/4k.bin", "wb") as f:
        f.write(os.urandom(4096))
    with open(f"{d}/html/1m.bin", "wb") as f:
        f.write(os.urandom(1 << 20))
    os.system(f"chmod -R a+rX {d}")

    backend_port, ngxr_port, nginx_port, ceiling_port = (free_port() for _ in range(4))
    with open(f"{d}/ngxr.conf", "w") as f:
        f.write(ngxr_conf(d, ngxr_port, backend_port))
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(nginx_conf(d, nginx_port, backend_port))

    procs = []
    try:
        backend = Server("backend", [os.path.join(REL, "bench-ceiling"), f"127.0.0.1:{backend_port}"], backend_port, d,
                         role="client")
        procs.append(backend)
        ceiling = Server("ceiling", [os.path.join(REL, "bench-ceiling"), f"127.0.0.1:{ceiling_port}"], ceiling_port, d)
        procs.append(ceiling)
        ngxr = Server("ngxr", [os.path.join(REL, "ngxr"), "-p", d, "-c", f"{d}/ngxr.conf"], ngxr_port, d)
        procs.append(ngxr)
        nginx = Server("nginx", ["nginx", "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/nginx-error.log"], nginx_port, d)
        procs.append(nginx)

        for name, srv in [("ngxr", ngxr), ("nginx", nginx)]:
            for path in ["/13b.txt", "/4k.bin", "/1m.bin", "/proxy/x"]:
                out = subprocess.run(
                    ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{srv.port}{path}"],
                    capture_output=True, text=True, timeout=10).stdout
                if out != "200":
                    sys.exit(f"{name} answered {out} for {path}: the configurations are not equivalent")

        if a.instructions:
            ngxr.stop()
            nginx.stop()
            print("# user-space instructions per request (valgrind --tool=callgrind, one process each,"
                  f" wrk -t1 -c10 for {a.secs}s after a warm-up; syscalls not counted)")
            for title, path, _, close in SCENARIOS:
                if a.only and a.only not in title:
                    continue
                ir = {}
                for name, argv, conf, port in [
                    ("ngxr", [os.path.join(REL, "ngxr"), "-p", d], ngxr_conf(d, ngxr_port, backend_port), ngxr_port),
                    ("nginx", ["nginx", "-p", d, "-e", f"{d}/nginx-error.log"], nginx_conf(d, nginx_port, backend_port), nginx_port),
                ]:
                    ir[name] = instructions(d, name, argv, conf, port, path, a.secs, close)
                print(f"{title:40} ngxr {ir['ngxr']:>9.0f} | nginx {ir['nginx']:>9.0f} | ratio {ir['ngxr'] / ir['nginx']:.2f}"
                      " (lower is better)", flush=True)
            return

        print(f"# ngxr vs nginx ({subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip()}),"
              f" wrk -t1, {a.secs}s per run, {a.rounds} rounds A B, B A, ... after a warm-up, median shown")
        pin = (f"servers on CPU {PIN['server']}, wrk and backend on CPU {PIN['client']}"
               if PIN["server"] is not None else "not pinned")
        print(f"# {os.cpu_count()} CPUs, {pin}, {time.strftime('%Y-%m-%d')}")
        print("# per server: requests/s; p99 latency; CPU time per request, of the whole machine (servers, wrk,"
              " backend, kernel) and of the server's worker alone; wrk's CPU (100 % = one CPU: wrk is the limit)")
        print("# ratio = ngxr/nginx requests/s: median, and the lowest and highest round's own ratio")
        workers = {"ngxr": ngxr.worker_pid(), "nginx": nginx.worker_pid()}
        keys = ["rps", "p99", "cpu", "worker", "client"]
        for title, path, conns, close in SCENARIOS:
            if a.only and a.only not in title:
                continue
            runs = {"ngxr": [], "nginx": []}
            pair = [("ngxr", ngxr), ("nginx", nginx)]
            # A warm-up run each (caches, the upstream pool, the kernel's
            # socket memory), not counted: the first run of a row would
            # otherwise pay for it.
            for name, srv in pair:
                wrk(srv.port, path, 1, conns, close)
            for i in range(a.rounds):
                for name, srv in pair if i % 2 == 0 else pair[::-1]:
                    r = wrk(srv.port, path, a.secs, conns, close, worker=workers[name])
                    runs[name].append(r)
                    if r["note"]:
                        print(f"  ! {name} {title}:{r['note']}", file=sys.stderr)
            med = {k: {f: statistics.median(r[f] for r in v) for f in keys} for k, v in runs.items()}
            ratio = med["ngxr"]["rps"] / med["nginx"]["rps"]
            # Each round's own ratio (its ngxr run over its nginx run, one
            # right after the other): the spread says how far the median
            # can be trusted.
            each = [x["rps"] / y["rps"] for x, y in zip(runs["ngxr"], runs["nginx"])]
            print(title, flush=True)
            for k, m in med.items():
                print(f"    {k:5} {m['rps']:>9.0f} rps  p99 {m['p99']:6.2f} ms  CPU/req machine {m['cpu']:6.1f} µs"
                      f"  worker {m['worker']:6.1f} µs  wrk {m['client'] * 100:3.0f} %")
            # When wrk runs flat out for both servers, requests/s is wrk's
            # speed, not theirs: say so next to the ratio, with what does
            # still separate them.
            bound = min(m["client"] for m in med.values()) >= 0.9
            cost = med["ngxr"]["worker"] / med["nginx"]["worker"]
            print(f"    ratio {ratio:.2f} (rounds {min(each):.2f}-{max(each):.2f})"
                  f"; worker CPU/req ngxr/nginx {cost:.2f}" + ("  [wrk-bound: requests/s is wrk's speed]" if bound else ""),
                  flush=True)

        if not a.only or "ceiling" in a.only:
            c = [wrk(ceiling.port, "/", a.secs, 50)["rps"] for _ in range(a.rounds)]
            print(f"{'ceiling: bare mio+httparse fixed reply':40} {statistics.median(c):>14.0f} rps", flush=True)

        if a.idle and (not a.only or "idle" in a.only):
            mem = {}
            for name, srv in [("ngxr", ngxr), ("nginx", nginx)]:
                base, loaded = idle_rss(srv.port, srv.worker_pid(), a.idle)
                mem[name] = (base, loaded)
            per = {k: (v[1] - v[0]) * 1024 / a.idle for k, v in mem.items()}
            print(f"{'RSS, ' + str(a.idle) + ' idle keepalive conns':40} ngxr {mem['ngxr'][1] / 1024:7.1f} MiB "
                  f"({per['ngxr']:.0f} B/conn) | nginx {mem['nginx'][1] / 1024:7.1f} MiB ({per['nginx']:.0f} B/conn) | "
                  f"ratio {mem['ngxr'][1] / mem['nginx'][1]:.2f}", flush=True)
    finally:
        for p in reversed(procs):
            p.stop()
        for p in procs:
            err = p.proc.stderr.read().decode(errors="replace").strip() if p.proc.stderr else ""
            if err and p.name in ("ngxr", "nginx"):
                print(f"# {p.name} stderr: {err[:2000]}", file=sys.stderr)
        if os.environ.get("BENCH_KEEP"):
            print(f"# kept {d}", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
