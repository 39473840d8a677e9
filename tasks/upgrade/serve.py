"""`doit serve`: the proven packages of a workspace over HTTP(S), for AT+QFOTADL="http://...".

Only packages `doit verify` proved are served (`dfota.upgrade.proven`), each at an immutable address
`/<source key>/<target key>/update.zip` with its md5 at `.../update.zip.md5`; `/index.json`
maps each source version to its package. The package's ETag is its sha256; HEAD, a single
byte range (`Range: bytes=a-b`, `a-`, `-n`) and `If-Range` with that ETag are answered, so a
module can resume a download cut short. Anything else is 404. One line per request.

The standard library's `ThreadingHTTPServer` serves: a thread per connection is plenty for a
rack of modules, each downloading one file; it needs no dependency, and TLS is the `ssl`
module's wrapping of its socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from dfota.core.errors import DfotaError, shown_path
from dfota.settings import Workspace
from dfota.upgrade.proven import ProvenPackage, proven_packages

_CHUNK = 256 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Catalogue:
    """The proven packages, looked up again for each request (a new `doit verify` may have
    published another), with md5s computed once per file and sha256s kept in the
    workspace's digest cache while the files stay as they were."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.md5s: dict[str, str] = {}
        self.lock = threading.Lock()
        self.state = ws.open_state()
        self.state_lock = threading.Lock()

    def packages(self) -> list[ProvenPackage]:
        with self.state_lock:
            found = proven_packages(self.ws, self.state.digests)
            with contextlib.suppress(DfotaError):  # a cache: losing it costs a hashing
                self.state.digests.save()
            return found

    def md5(self, package: ProvenPackage) -> str:
        with self.lock:
            if package.sha256 not in self.md5s:
                digest = hashlib.md5()
                with package.path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                self.md5s[package.sha256] = digest.hexdigest()
            return self.md5s[package.sha256]

    def index(self, base: str) -> dict[str, object]:
        sources: dict[str, object] = {}
        for p in self.packages():
            sources.setdefault(p.source, {
                "url": base + p.url_path, "md5_url": base + p.url_path + ".md5",
                "target": p.target, "sha256": p.sha256, "size": p.size})
        return {"sources": sources}


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) of a single byte range; None when it cannot be satisfied or is not one
    range (the caller then answers 416)."""
    found = _RANGE.fullmatch(header.strip())
    if found is None:
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:
        count = int(last)
        return (max(0, size - count), size - 1) if count and size else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end and start < size else None


@dataclass(frozen=True)
class ServeOptions:
    """Where and how `doit serve` listens: HTTPS when a certificate and its key are given."""

    bind: str
    port: int
    cert: str = ""
    key: str = ""

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"


@dataclass(frozen=True)
class Serving:
    """What every request is answered from, and where its line goes."""

    catalogue: Catalogue
    say: Callable[[str], None]
    scheme: str


class PackageHandler(BaseHTTPRequestHandler):
    """One request: /index.json, a package (whole, or one byte range) or its .md5."""

    server: ThreadingHTTPServer
    serving: ClassVar[Serving]
    server_version = "dfota-serve"
    protocol_version = "HTTP/1.1"
    sent = 0
    status: object = "-"

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request, written by log_request

    def log_request(self, code: object = "-", size: object = "-") -> None:
        self.status = int(code) if isinstance(code, int | HTTPStatus) else code

    def do_HEAD(self) -> None:
        self.answered(body=False)

    def do_GET(self) -> None:
        self.answered(body=True)

    def answered(self, body: bool) -> None:
        self.sent, self.status = 0, "-"
        try:
            self.answer(body)
        finally:
            self.serving.say(f"serve: {self.client_address[0]} "
                             f"\"{shown_path(self.requestline)}\" {self.status} {self.sent} bytes")

    def base_url(self) -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"{self.serving.scheme}://{host}"

    def answer(self, body: bool) -> None:
        catalogue = self.serving.catalogue
        path = unquote(urlsplit(self.path).path)
        if path == "/index.json":
            data = (json.dumps(catalogue.index(self.base_url()), indent=1) + "\n").encode()
            return self.small(data, "application/json", body)
        for package in catalogue.packages():
            address = unquote(package.url_path)
            if path == address:
                return self.package(package, body)
            if path == address + ".md5":
                data = f"{catalogue.md5(package)}  update.zip\n".encode()
                return self.small(data, "text/plain", body)
        self.small(b"not found\n", "text/plain", body, HTTPStatus.NOT_FOUND)

    def small(self, data: bytes, kind: str, body: bool,
              status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)
            self.sent = len(data)

    def package(self, package: ProvenPackage, body: bool) -> None:
        etag = f'"{package.sha256}"'
        size = package.size
        first, last, status = 0, size - 1, HTTPStatus.OK
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range.strip() == etag):
            span = parse_range(wanted, size)
            if span is None:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            (first, last), status = span, HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/zip")
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        self.send_header("Content-Length", str(last - first + 1))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if body:
            self.send_bytes(package, first, last)

    def send_bytes(self, package: ProvenPackage, first: int, last: int) -> None:
        with package.path.open("rb") as f:
            if os.fstat(f.fileno()).st_size != package.size:  # replaced since it was looked up
                self.close_connection = True
                return
            f.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return
                self.sent += len(chunk)
                left -= len(chunk)


def make_handler(serving: Serving) -> type[PackageHandler]:
    """The handler class of one server (the standard library's server takes a class)."""

    class Handler(PackageHandler):
        pass

    Handler.serving = serving
    return Handler


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def start_server(ws: Workspace, options: ServeOptions,
                 say: Callable[[str], None]) -> ThreadingHTTPServer:
    bind, port, cert, key = options.bind, options.port, options.cert, options.key
    if bool(cert) != bool(key):
        raise DfotaError("HTTPS needs both --cert FILE and --key FILE")
    handler = make_handler(Serving(Catalogue(ws), say, options.scheme))
    server_class = _Server6 if ":" in bind else ThreadingHTTPServer
    try:
        server = server_class((bind, port), handler)
    except OSError as exc:
        raise DfotaError(f"--bind {bind} --port {port}: cannot listen ({exc.strerror})") \
            from None
    server.daemon_threads = True
    if cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            server.server_close()
            raise DfotaError(f"cannot load the certificate and key ({exc})", cert) from None
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def serve(ws: Workspace, options: ServeOptions, say: Callable[[str], None],
          stop: threading.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`)."""
    server = start_server(ws, options, say)
    bind = options.bind
    if bind in ("127.0.0.1", "::1", "localhost"):
        say(f"warning: --bind {bind}: only this machine reaches it; modules need an address "
            "of this machine that they can reach (--bind 0.0.0.0 or the rack's interface)")
    stop = stop or threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    thread.start()
    host, real_port = server.server_address[:2]
    assert isinstance(host, str)  # as the bound socket names it
    count = len(Catalogue(ws).packages())
    say(f"serve: {count} proven package(s) at {options.scheme}://{host}:{real_port}/index.json")
    if not count:
        say(f"warning: {shown_path(ws.out_dir)}: no proven package to serve yet "
            "(doit delta verify)")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        say("serve: stopped")
