#!/usr/bin/env python3
"""Regenerate ``examples/sample_traffic/``: real client/server programs talking over loopback, captured to pcap.

Every capture session starts ``tcpdump`` on the loopback interface, filtered to one randomly chosen
server address in 127.0.0.0/8 (or ``::1``) and one random server port, runs one traffic class
between real programs (Python's ``ssl``/``http.server``/``http.client``/``smtplib``, the ``curl`` and
``openssl`` command line tools) and stops the capture. Nothing leaves the machine: every socket is bound to a
loopback address and the capture filter only admits the session's own server address and port, so
other loopback traffic on the host never lands in a sample file.

Classes (directory names are the labels):

* ``https-bulk``     curl downloads of 8 KB - 1.5 MB blobs from a TLS HTTP server (HTTP/1.1 or HTTP/2,
                     TLS 1.2 or 1.3, sometimes two blobs over one connection).
* ``https-api``      keep-alive TLS connections carrying 2-9 small JSON POST/GET requests with think times.
* ``tls-chat``       long-lived TLS sockets exchanging small length-prefixed messages both ways at random
                     intervals, like a chat or push-notification channel.
* ``smtp-starttls``  ``smtplib`` submitting 1-3 mails per connection to a small SMTP server after
                     STARTTLS and AUTH PLAIN (clear-text greeting, then TLS).
* ``udp-stream``     real-time-media-like UDP: fixed-size random (encrypted-looking) datagrams every
                     20-40 ms with an RTP-like header, periodic receiver reports back, some calls two-way.
* ``dtls-messaging`` ``openssl s_client -dtls`` and ``openssl s_server -dtls`` (DTLS 1.2 over UDP) exchanging
                     a few text lines each way with random pauses, then close_notify.

Requirements (checked at start): Linux, root (or CAP_NET_RAW for tcpdump), ``tcpdump`` (Debian:
``apt-get install -y tcpdump``), ``openssl`` (self-signed certificates made at capture time) and
``curl`` on PATH; Python >= 3.9 standard library only.

Usage::

    sudo python scripts/capture_sample_traffic.py               # rewrites examples/sample_traffic/
    python scripts/capture_sample_traffic.py --out some/dir --sessions 3 --classes tls-chat

Parameters (sizes, delays, TLS versions, ciphers, key types, SNI names, addresses, ports) are drawn
from a random generator seeded by ``--seed`` and the session, so a rerun makes the same kinds of
sessions; the bytes differ (TLS keys, timing), as in any real capture.
"""

import argparse
import functools
import http.client
import http.server
import ipaddress
import json
import os
import random
import re
import shutil
import smtplib
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "examples" / "sample_traffic"
CLASSES = ("https-bulk", "https-api", "tls-chat", "smtp-starttls", "udp-stream", "dtls-messaging")
UDP_CLASSES = ("udp-stream", "dtls-messaging")
# Loopback delivers TCP segments of up to 64 KB (GSO); cap what is stored per packet at an
# Ethernet frame so bulk transfers stay small. The IP total length field keeps the true size.
DEFAULT_SNAPLEN = 1514
MAX_FILE_BYTES = 1_000_000
HOSTNAMES = (
    "api.example.com",
    "cdn.example.net",
    "files.example.org",
    "static.test",
    "chat.example.com",
    "push.example.net",
    "mail.example.org",
    "smtp.example.test",
    "media.example.com",
    "rtc.example.net",
    "update.example.org",
    "img.example.test",
    "login.example.com",
    "storage.example.net",
)


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# requirements, certificates, addresses
# ----------------------------------------------------------------------------------------------
def check_requirements():
    """Fail early with a clear message when the capture cannot work."""
    problems = []
    if not sys.platform.startswith("linux"):
        problems.append("needs Linux (captures on the 'lo' interface, uses any 127.x.y.z address)")
    for tool, hint in (
        ("tcpdump", "apt-get install -y tcpdump"),
        ("openssl", "apt-get install -y openssl"),
        ("curl", "apt-get install -y curl"),
    ):
        if shutil.which(tool) is None:
            problems.append(f"'{tool}' not found on PATH (Debian/Ubuntu: {hint})")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        log("warning: not running as root; tcpdump needs CAP_NET_RAW/CAP_NET_ADMIN to capture on 'lo'")
    if problems:
        raise SystemExit("cannot capture sample traffic:\n  " + "\n  ".join(problems))


def make_certificate(workdir, name, hostname, key_type):
    """Self-signed certificate for ``hostname`` (key_type 'rsa2048', 'rsa3072' or 'ec256')."""
    key, crt = workdir / f"{name}.key", workdir / f"{name}.crt"
    if key_type.startswith("rsa"):
        newkey = ["-newkey", f"rsa:{key_type[3:]}"]
    else:
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-nodes",
            "-days",
            "30",
            *newkey,
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-subj",
            f"/CN={hostname}",
            "-addext",
            f"subjectAltName=DNS:{hostname}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return crt, key


def random_loopback_v4(rng, avoid=()):
    while True:
        addr = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        if addr not in avoid:
            return addr


def free_port(rng, host, kind):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        port = rng.randint(20000, 60999)
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host}")


def server_context(crt, key, tls_max, ciphers12):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = tls_max
    ctx.set_ciphers(ciphers12)
    return ctx


def client_context(tls_max):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # self-signed test certificates
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = tls_max
    return ctx


class Session:
    """Parameters shared by one capture session (one pcap file)."""

    def __init__(self, label, index, seed, workdir):
        self.label, self.index = label, index
        self.rng = random.Random(f"{seed}/{label}/{index}")
        rng = self.rng
        self.ipv6 = index % 4 == 3  # every fourth session runs over ::1
        if self.ipv6:
            self.server_ip = self.client_ip = "::1"
        else:
            self.server_ip = random_loopback_v4(rng)
            self.client_ip = random_loopback_v4(rng, avoid=(self.server_ip,))
        kind = socket.SOCK_DGRAM if label in UDP_CLASSES else socket.SOCK_STREAM
        # own generator: a busy port (e.g. in TIME_WAIT from a previous run) must not shift the other draws
        self.port = free_port(random.Random(f"{seed}/{label}/{index}/port"), self.server_ip, kind)
        self.hostname = rng.choice(HOSTNAMES)
        self.tls_max = rng.choice([ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3])
        self.ciphers12 = rng.choice(["ECDHE+AESGCM", "ECDHE+CHACHA20", "ECDHE+AES256:ECDHE+AES128"])
        self.key_type = rng.choice(["rsa2048", "rsa3072", "ec256"])
        self.workdir = workdir
        self._ctx = None
        self._cert = None

    @property
    def family(self):
        return socket.AF_INET6 if self.ipv6 else socket.AF_INET

    def certificate(self):
        """(certificate, key) paths for this session, made on first use."""
        if self._cert is None:
            self._cert = make_certificate(self.workdir, f"{self.label}-{self.index}", self.hostname, self.key_type)
        return self._cert

    def server_tls(self):
        if self._ctx is None:
            self._ctx = server_context(*self.certificate(), self.tls_max, self.ciphers12)
        return self._ctx

    def describe(self):
        if self.label == "udp-stream":
            security = "no TLS"
        elif self.label == "dtls-messaging":
            security = f"dtls 1.2 {self.key_type}"
        else:
            security = f"tls<= {'1.3' if self.tls_max == ssl.TLSVersion.TLSv1_3 else '1.2'} {self.key_type}"
        return (
            f"{self.label}/{self.index:02d} server {self.server_ip}:{self.port} client {self.client_ip} "
            f"sni {self.hostname} {security}"
        )


def tcp_listener(session, backlog=64):
    srv = socket.socket(session.family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((session.server_ip, session.port))
    srv.listen(backlog)
    srv.settimeout(0.2)
    return srv


def tcp_connect(session, timeout=10.0):
    return socket.create_connection(
        (session.server_ip, session.port), timeout=timeout, source_address=(session.client_ip, 0)
    )


def run_threads(targets):
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)


def run_pool(jobs, workers):
    """Run callables with at most ``workers`` at a time (bounded, no executor pickling)."""
    lock = threading.Lock()
    queue = list(jobs)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                job = queue.pop(0)
            try:
                job()
            except Exception as exc:  # one failed flow must not stop the session
                log(f"    flow error: {exc!r}")

    run_threads([worker] * workers)


# ----------------------------------------------------------------------------------------------
# HTTPS server shared by https-bulk and https-api
# ----------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nginx/1.24.0"
    sys_version = ""

    def log_message(self, *args):
        pass

    def _reply(self, body, ctype):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts[0] == "blob" and len(parts) > 1 and parts[1].isdigit():
            size = min(int(parts[1]), 4_000_000)
            self._reply(random.Random(self.path).randbytes(size), "application/octet-stream")
        else:
            self._api_reply()

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        if length:
            self.rfile.read(length)
        self._api_reply()

    def _api_reply(self):
        rng = random.Random(hash((self.path, time.time())))
        time.sleep(rng.uniform(0.003, 0.04))  # server "think" time
        items = [
            {"id": rng.randint(1, 10**6), "name": f"item-{rng.randint(0, 999)}", "score": round(rng.random(), 4)}
            for _ in range(rng.randint(0, 12))
        ]
        body = json.dumps({"ok": True, "path": self.path, "items": items}).encode()
        self._reply(body, "application/json")


class _TLSHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, session):
        self.address_family = session.family
        super().__init__((session.server_ip, session.port), _Handler, bind_and_activate=True)
        self.socket = session.server_tls().wrap_socket(self.socket, server_side=True)

    def server_bind(self):
        # HTTPServer.server_bind does a reverse DNS lookup (socket.getfqdn); skip it, we are offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


def with_https_server(session, body):
    server = _TLSHTTPServer(session)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        body()
    finally:
        server.shutdown()
        server.server_close()


def https_bulk(session):
    rng = session.rng
    host_part = f"[{session.server_ip}]" if session.ipv6 else session.server_ip
    jobs = []
    for flow in range(rng.randint(10, 13)):
        n_blobs = 2 if rng.random() < 0.25 else 1
        sizes = [int(10 ** rng.uniform(3.9, 6.2)) for _ in range(n_blobs)]  # ~8 KB .. 1.6 MB
        urls = [f"https://{session.hostname}:{session.port}/blob/{s}?f={flow}" for s in sizes]
        cmd = [
            "curl",
            "-sS",
            "-k",
            "--max-time",
            "20",
            "--interface",
            session.client_ip,
            "--resolve",
            f"{session.hostname}:{session.port}:{host_part}",
            "-A",
            rng.choice(["curl/7.88.1", "Mozilla/5.0 (X11; Linux x86_64)", "Wget/1.21"]),
        ]
        cmd += rng.choice([["--http1.1"], ["--http1.1"], ["--http2"]])
        if session.tls_max == ssl.TLSVersion.TLSv1_2:
            cmd += ["--tls-max", "1.2"]
        for url in urls:
            cmd += ["-o", "/dev/null", url]
        pause = rng.uniform(0.0, 0.3)

        def job(cmd=cmd, pause=pause):
            time.sleep(pause)
            subprocess.run(cmd, check=True, timeout=30, stdout=subprocess.DEVNULL)

        jobs.append(job)
    with_https_server(session, lambda: run_pool(jobs, workers=2))


def https_api(session):
    rng = session.rng
    client_ctx = client_context(session.tls_max)
    endpoints = ["/v1/users/me", "/v1/feed", "/v1/search", "/v1/events", "/v2/metrics", "/v1/cart", "/graphql"]
    jobs = []
    for _ in range(rng.randint(8, 11)):
        plan = []
        for _ in range(rng.randint(2, 9)):
            method = rng.choice(["GET", "POST", "POST"])
            body = None
            if method == "POST":
                body = json.dumps({"q": "x" * rng.randint(5, 400), "page": rng.randint(1, 9)}).encode()
            plan.append((method, rng.choice(endpoints), body, rng.uniform(0.02, 0.25)))
        token = f"{rng.getrandbits(128):032x}"

        def job(plan=plan, token=token):
            conn = http.client.HTTPSConnection(
                session.hostname, session.port, timeout=10, context=client_ctx, source_address=(session.client_ip, 0)
            )
            # connect to the loopback address while SNI and Host carry the session's hostname
            conn._create_connection = lambda _addr, *a, **k: socket.create_connection(
                (session.server_ip, session.port), *a, **k
            )
            try:
                for method, path, body, gap in plan:
                    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
                    if body is not None:
                        headers["Content-Type"] = "application/json"
                    conn.request(method, path, body=body, headers=headers)
                    conn.getresponse().read()
                    time.sleep(gap)
            finally:
                conn.close()

        jobs.append(job)
    with_https_server(session, lambda: run_pool(jobs, workers=3))


# ----------------------------------------------------------------------------------------------
# tls-chat
# ----------------------------------------------------------------------------------------------
def _send_msg(sock, obj):
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack("!H", len(data)) + data)


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _recv_msg(sock):
    (n,) = struct.unpack("!H", _recv_exact(sock, 2))
    return json.loads(_recv_exact(sock, n))


def tls_chat(session):
    rng = session.rng
    ctx = session.server_tls()
    client_ctx = client_context(session.tls_max)
    n_clients = rng.randint(8, 11)
    stop = threading.Event()
    srv = tcp_listener(session)

    def serve_one(raw, seed):
        prng = random.Random(seed)
        try:
            with ctx.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(15)
                lock = threading.Lock()
                done = threading.Event()

                def pusher():  # unsolicited messages from "other users"
                    while not done.wait(prng.uniform(0.2, 1.2)):
                        with lock:
                            _send_msg(
                                conn,
                                {
                                    "type": "msg",
                                    "from": f"user{prng.randint(1, 50)}",
                                    "text": "y" * prng.randint(3, 160),
                                },
                            )

                t = threading.Thread(target=pusher, daemon=True)
                t.start()
                try:
                    while True:
                        msg = _recv_msg(conn)
                        if msg.get("type") == "bye":
                            break
                        with lock:
                            _send_msg(conn, {"type": "ack", "id": msg.get("id")})
                finally:
                    done.set()
                    t.join(timeout=2)
                    with lock:
                        _send_msg(conn, {"type": "bye"})
        except (OSError, ValueError, ConnectionError):
            pass

    def accept_loop():
        workers = []
        while not stop.is_set():
            try:
                raw, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            raw.settimeout(15)
            t = threading.Thread(target=serve_one, args=(raw, rng.random()), daemon=True)
            t.start()
            workers.append(t)
        for t in workers:
            t.join(timeout=10)

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()

    def client(seed):
        crng = random.Random(seed)
        time.sleep(crng.uniform(0, 0.8))
        with client_ctx.wrap_socket(tcp_connect(session), server_hostname=session.hostname) as conn:
            conn.settimeout(15)
            _send_msg(
                conn, {"type": "hello", "user": f"user{crng.randint(1, 50)}", "token": f"{crng.getrandbits(96):024x}"}
            )

            def reader():
                try:
                    while _recv_msg(conn).get("type") != "bye":
                        pass
                except (OSError, ValueError, ConnectionError):
                    pass

            r = threading.Thread(target=reader, daemon=True)
            r.start()
            for i in range(crng.randint(4, 16)):
                time.sleep(crng.expovariate(1 / 0.25) if crng.random() < 0.8 else crng.uniform(0.5, 1.2))
                _send_msg(conn, {"type": "msg", "id": i, "text": "x" * crng.randint(1, 200)})
            _send_msg(conn, {"type": "bye"})
            r.join(timeout=5)

    try:
        run_pool([functools.partial(client, rng.random()) for _ in range(n_clients)], workers=n_clients)
    finally:
        stop.set()
        acceptor.join(timeout=15)
        srv.close()


# ----------------------------------------------------------------------------------------------
# smtp-starttls
# ----------------------------------------------------------------------------------------------
def _smtp_serve(raw, ctx, hostname):
    """A deliberately small ESMTP server: EHLO, STARTTLS, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""
    sock = raw
    sock.settimeout(15)
    reader = sock.makefile("rb")

    def say(line):
        sock.sendall(line.encode() + b"\r\n")

    say(f"220 {hostname} ESMTP ready")
    tls = False
    try:
        while True:
            line = reader.readline(4096)
            if not line:
                return
            cmd = line.decode("ascii", "replace").strip()
            verb = cmd.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                caps = [f"250-{hostname} greets you", "250-SIZE 35882577", "250-8BITMIME", "250-PIPELINING"]
                caps.append("250-AUTH PLAIN LOGIN" if tls else "250-STARTTLS")
                caps.append("250 SMTPUTF8")
                sock.sendall(("\r\n".join(caps) + "\r\n").encode())
            elif verb == "STARTTLS" and not tls:
                say("220 2.0.0 Ready to start TLS")
                reader.close()
                sock = ctx.wrap_socket(sock, server_side=True)
                sock.settimeout(15)
                reader = sock.makefile("rb")
                tls = True
            elif verb == "AUTH":
                say("235 2.7.0 Authentication successful")
            elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                say("250 2.1.0 Ok")
            elif verb == "DATA":
                say("354 End data with <CR><LF>.<CR><LF>")
                while True:
                    data_line = reader.readline(1 << 16)
                    if not data_line or data_line in (b".\r\n", b".\n"):
                        break
                say(f"250 2.0.0 Ok: queued as {random.getrandbits(40):010X}")
            elif verb == "QUIT":
                say("221 2.0.0 Bye")
                return
            else:
                say("502 5.5.2 Error: command not recognized")
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


def smtp_starttls(session):
    rng = session.rng
    ctx = session.server_tls()
    client_ctx = client_context(session.tls_max)
    srv = tcp_listener(session)
    stop = threading.Event()

    def accept_loop():
        while not stop.is_set():
            try:
                raw, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=_smtp_serve, args=(raw, ctx, session.hostname), daemon=True).start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    words = ["report", "invoice", "meeting", "status", "weekly", "build", "alert", "photo", "draft", "notes"]
    jobs = []
    for _ in range(rng.randint(8, 11)):
        mails = []
        for _ in range(rng.randint(1, 3)):
            msg = EmailMessage()
            msg["From"] = f"user{rng.randint(1, 99)}@example.org"
            msg["To"] = ", ".join(f"rcpt{rng.randint(1, 99)}@example.com" for _ in range(rng.randint(1, 3)))
            msg["Subject"] = " ".join(rng.choice(words) for _ in range(rng.randint(1, 5)))
            msg.set_content(
                "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(rng.randint(2, 120)))
            )
            if rng.random() < 0.2:
                msg.add_attachment(
                    rng.randbytes(rng.randint(2000, 12000)),
                    maintype="application",
                    subtype="octet-stream",
                    filename="data.bin",
                )
            mails.append(msg)
        pause = rng.uniform(0.0, 0.4)

        def job(mails=mails, pause=pause):
            time.sleep(pause)
            with smtplib.SMTP(
                timeout=10, local_hostname="client.example.org", source_address=(session.client_ip, 0)
            ) as smtp:
                smtp.connect(session.server_ip, session.port)
                smtp._host = session.hostname  # SNI name for STARTTLS (we connect to a loopback address)
                smtp.ehlo()
                smtp.starttls(context=client_ctx)
                smtp.ehlo()
                smtp.login("user@example.org", "not-a-real-password")
                for m in mails:
                    smtp.send_message(m)

        jobs.append(job)
    try:
        run_pool(jobs, workers=3)
    finally:
        stop.set()
        acceptor.join(timeout=5)
        srv.close()


# ----------------------------------------------------------------------------------------------
# udp-stream
# ----------------------------------------------------------------------------------------------
def udp_stream(session):
    rng = session.rng
    srv = socket.socket(session.family, socket.SOCK_DGRAM)
    srv.bind((session.server_ip, session.port))
    srv.settimeout(0.2)
    stop = threading.Event()
    peers = {}
    lock = threading.Lock()

    def server_loop():
        srng = random.Random(rng.random())
        while not stop.is_set():
            try:
                data, addr = srv.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            with lock:
                state = peers.setdefault(addr, {"n": 0, "echo": data[0] & 1})
                state["n"] += 1
                n = state["n"]
            if state["echo"] and len(data) > 40:  # two-way call: answer media with media
                srv.sendto(data[:12] + srng.randbytes(len(data) - 12), addr)
            if n % 10 == 0 or n == 1:  # receiver report / keep-alive
                srv.sendto(b"\x81\xc9" + srng.randbytes(srng.choice([30, 50, 70])), addr)

    server = threading.Thread(target=server_loop, daemon=True)
    server.start()

    def call(seed):
        crng = random.Random(seed)
        payload = crng.choice([20, 33, 60, 80, 120, 160, 172, 240, 320])
        interval = crng.choice([0.02, 0.02, 0.03, 0.04])
        duration = crng.uniform(0.5, 1.4)
        two_way = crng.random() < 0.4
        ssrc = crng.getrandbits(32)
        time.sleep(crng.uniform(0, 0.5))
        with socket.socket(session.family, socket.SOCK_DGRAM) as sock:
            sock.bind((session.client_ip, 0))
            sock.setblocking(False)
            seq, ts, start = crng.getrandbits(16), crng.getrandbits(32), time.monotonic()
            while time.monotonic() - start < duration:
                # RTP-like header (version 2, payload type 111); the low bit of the first byte asks the
                # server to send media back (two-way call). The body is random, like SRTP ciphertext.
                header = struct.pack("!BBHII", 0x80 | int(two_way), 111, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
                size = payload + (crng.randint(-6, 6) if payload > 40 else 0)
                sock.sendto(header + crng.randbytes(size), (session.server_ip, session.port))
                seq, ts = seq + 1, ts + int(interval * 8000)
                try:
                    while True:
                        sock.recvfrom(4096)
                except (BlockingIOError, OSError):
                    pass
                time.sleep(max(0.0, interval + crng.gauss(0, interval / 10)))

    try:
        n = rng.randint(8, 11)
        run_pool([functools.partial(call, rng.random()) for _ in range(n)], workers=n)
    finally:
        time.sleep(0.1)
        stop.set()
        server.join(timeout=5)
        srv.close()


# ----------------------------------------------------------------------------------------------
# dtls-messaging (the openssl command line tools over UDP)
# ----------------------------------------------------------------------------------------------
def _feed(proc, rng, n_messages, delay):
    """Write ``n_messages`` random text lines to ``proc``'s stdin with random pauses."""
    try:
        for _ in range(n_messages):
            time.sleep(rng.uniform(*delay))
            # lines start with a digit: s_server reads a leading letter (q, r, k, ...) as a command
            line = f"{rng.randint(0, 9999)} " + "".join(
                rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(rng.randint(4, 300))
            )
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass


def dtls_messaging(session):
    rng = session.rng
    crt, key = session.certificate()
    host = f"[{session.server_ip}]" if session.ipv6 else session.server_ip
    chost = f"[{session.client_ip}]" if session.ipv6 else session.client_ip
    cipher = rng.choice(["ECDHE+AESGCM", "ECDHE+CHACHA20", "ECDHE+AES256", "ECDHE+AES128"])
    # one s_server per flow (it serves one DTLS client, -naccept 1), so flows run one after another
    for _ in range(rng.randint(8, 11)):
        server = subprocess.Popen(
            [
                "openssl",
                "s_server",
                "-dtls",
                "-accept",
                f"{host}:{session.port}",
                "-cert",
                str(crt),
                "-key",
                str(key),
                "-naccept",
                "1",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        client = None
        try:
            # s_server prints ACCEPT once its socket is bound; drain the rest so it never blocks on stdout
            deadline = time.monotonic() + 10
            while b"ACCEPT" not in server.stdout.readline():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("openssl s_server did not start")
            threading.Thread(target=server.stdout.read, daemon=True).start()
            client = subprocess.Popen(
                [
                    "openssl",
                    "s_client",
                    "-dtls",
                    "-connect",
                    f"{host}:{session.port}",
                    "-bind",
                    f"{chost}:0",
                    "-servername",
                    session.hostname,
                    "-cipher",
                    cipher,
                    "-quiet",
                    "-no_ign_eof",
                    "-nocommands",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            server_rng, client_rng = random.Random(rng.random()), random.Random(rng.random())
            n_client = rng.randint(2, 10)
            pusher = threading.Thread(
                target=_feed, args=(server, server_rng, rng.randint(0, 5), (0.05, 0.3)), daemon=True
            )
            pusher.start()
            _feed(client, client_rng, n_client, (0.02, 0.2))
            time.sleep(rng.uniform(0.05, 0.3))
            client.stdin.close()  # EOF: s_client sends close_notify and exits (-no_ign_eof)
            client.wait(timeout=20)
            pusher.join(timeout=5)
        except Exception as exc:
            log(f"    flow error: {exc!r}")
        finally:
            for proc in (client, server):
                if proc is None:
                    continue
                try:
                    if proc.stdin and not proc.stdin.closed:
                        proc.stdin.close()
                    proc.wait(timeout=5)
                except (subprocess.TimeoutExpired, OSError):
                    proc.kill()
                    proc.wait()


GENERATORS = {
    "https-bulk": https_bulk,
    "https-api": https_api,
    "tls-chat": tls_chat,
    "smtp-starttls": smtp_starttls,
    "udp-stream": udp_stream,
    "dtls-messaging": dtls_messaging,
}


# ----------------------------------------------------------------------------------------------
# capture
# ----------------------------------------------------------------------------------------------
class Capture:
    """tcpdump on 'lo' restricted to the session's server address and port."""

    def __init__(self, session, path, snaplen):
        proto = "udp" if session.label in UDP_CLASSES else "tcp"
        ip = ipaddress.ip_address(session.server_ip)
        assert ip.is_loopback, session.server_ip
        bpf = f"{proto} and host {session.server_ip} and port {session.port}"
        # --immediate-mode: without it packets wait in the kernel ring buffer for up to a second and the
        # last ones of a session are lost when tcpdump is stopped.
        self.cmd = ["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U", "-s", str(snaplen), "-w", str(path), bpf]
        self.path = path

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # tcpdump prints "listening on lo ..." once the socket is live; only then start talking.
        line = self.proc.stderr.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise SystemExit(f"tcpdump did not start ({' '.join(self.cmd)}): {line.strip()}")
        return self

    def __exit__(self, *exc):
        time.sleep(1.0)  # let the last FIN/ACKs reach the capture
        self.proc.send_signal(2)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.summary = " ".join(line.strip() for line in err.splitlines() if "packets" in line)
        found = re.findall(r"(\d+) packets? (captured|received by filter)", self.summary)
        counts = {what: int(n) for n, what in found}
        # On 'lo' every packet passes the filter twice (sent and received copy) and libpcap keeps one.
        if exc[0] is None and counts.get("captured", 0) * 2 < counts.get("received by filter", 0):
            raise SystemExit(f"{self.path}: tcpdump lost packets ({self.summary})")
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (one folder per class)")
    parser.add_argument("--sessions", type=int, default=8, help="capture files per class")
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=CLASSES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snaplen", type=int, default=DEFAULT_SNAPLEN)
    args = parser.parse_args(argv)
    check_requirements()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="mmae-sample-certs-") as tmp:
        for label in args.classes:
            out_dir = args.out / label
            out_dir.mkdir(parents=True, exist_ok=True)
            for old in out_dir.glob("*.pcap"):
                old.unlink()
            for index in range(args.sessions):
                session = Session(label, index, args.seed, Path(tmp))
                if label != "udp-stream":
                    session.certificate()  # make the certificate before the capture starts
                path = out_dir / f"{label}-{index:02d}.pcap"
                log(session.describe())
                with Capture(session, path, args.snaplen) as cap:
                    GENERATORS[label](session)
                size = path.stat().st_size
                log(f"    -> {path.name}: {size / 1024:.0f} KiB; tcpdump: {cap.summary}")
                if size > MAX_FILE_BYTES:
                    raise SystemExit(f"{path}: {size} bytes, over the {MAX_FILE_BYTES} byte limit per file")
    total = sum(p.stat().st_size for p in args.out.rglob("*.pcap"))
    log(f"done in {time.time() - started:.0f} s: {total / 1e6:.2f} MB under {args.out}")


if __name__ == "__main__":
    main()
