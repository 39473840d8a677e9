"""The device side of the ADB wire protocol over TCP, as the real `adb` client's server speaks
it to a module reached with `adb connect HOST:PORT` (what `doit twin` answers).

Messages are a 24-byte header (command, arg0, arg1, data length, data checksum, command XOR
0xffffffff) and their data. Implemented: CNXN (no AUTH: the twin asks for none), OPEN, OKAY,
WRTE and CLSE with one WRTE in flight per stream, as the protocol's flow control wants; the
banner names no feature, so the client falls back to the legacy `shell:` service (no shell_v2:
no exit codes) and the first sync protocol (STAT, not STA2). The sync service's requests
(STAT, SEND/DATA/DONE, RECV, LIST, QUIT) are in `SyncSession`; what a shell command or a
sync request does is the module's business (`dfota.upgrade.twin`).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

A_SYNC, A_CNXN, A_OPEN, A_OKAY = 0x434E5953, 0x4E584E43, 0x4E45504F, 0x59414B4F
A_CLSE, A_WRTE, A_AUTH = 0x45534C43, 0x45545257, 0x48545541
A_VERSION = 0x01000001  # skips the data checksum; the checksum is still filled in
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024
_HEADER = struct.Struct("<6I")
_NAMES = {A_SYNC: "SYNC", A_CNXN: "CNXN", A_OPEN: "OPEN", A_OKAY: "OKAY", A_CLSE: "CLSE",
          A_WRTE: "WRTE", A_AUTH: "AUTH"}


class WireError(Exception):
    """The peer broke the protocol or went away."""


@dataclass(frozen=True)
class Message:
    command: int
    arg0: int
    arg1: int
    data: bytes = b""

    def pack(self) -> bytes:
        return _HEADER.pack(self.command, self.arg0, self.arg1, len(self.data),
                            sum(self.data) & 0xFFFFFFFF, self.command ^ 0xFFFFFFFF) + self.data

    @property
    def name(self) -> str:
        return _NAMES.get(self.command, f"{self.command:#x}")


def read_exact(sock: socket.socket, count: int) -> bytes:
    chunks, left = [], count
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise WireError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(sock: socket.socket) -> Message:
    command, arg0, arg1, length, _check, magic = _HEADER.unpack(read_exact(sock, _HEADER.size))
    if magic != command ^ 0xFFFFFFFF:
        raise WireError(f"bad magic in a {command:#x} message")
    if length > MAX_PAYLOAD * 4:
        raise WireError(f"message of {length} bytes")
    return Message(command, arg0, arg1, read_exact(sock, length) if length else b"")


class Stream:
    """One stream of a connection, as the service behind it sees it: `read` the bytes the
    client wrote, `write` (one WRTE in flight, each acknowledged with OKAY), `close`."""

    def __init__(self, conn: Connection, local: int, remote: int, service: str) -> None:
        self.conn, self.local, self.remote, self.service = conn, local, remote, service
        self.incoming: queue.Queue[bytes | None] = queue.Queue()
        self.acked = threading.Event()
        self.acked.set()
        self.closed = threading.Event()
        self._buffer = b""

    # data from the client -------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> bytes:
        """The next bytes the client wrote; b"" once the stream is closed."""
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        try:
            got = self.incoming.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        return got or b""

    def read_exact(self, count: int) -> bytes:
        out = b""
        while len(out) < count:
            if self._buffer:
                take = self._buffer[:count - len(out)]
                self._buffer = self._buffer[len(take):]
                out += take
                continue
            chunk = self.incoming.get()
            if not chunk:
                raise WireError("stream closed")
            self._buffer = chunk
        return out

    # data to the client ---------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        limit = min(self.conn.max_payload, MAX_PAYLOAD)
        for at in range(0, len(data), limit):
            while not self.acked.wait(0.2):
                if self.closed.is_set() or self.conn.dead.is_set():
                    raise WireError("stream closed")
            if self.closed.is_set():
                raise WireError("stream closed")
            self.acked.clear()
            self.conn.send(Message(A_WRTE, self.local, self.remote, data[at:at + limit]))

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            with contextlib.suppress(OSError, WireError):
                self.conn.send(Message(A_CLSE, self.local, self.remote))
        self.conn.forget(self)

    def peer_closed(self) -> None:
        self.closed.set()
        self.incoming.put(None)


Service = Callable[[Stream], None]  # runs in its own thread; the stream is closed after it


class Connection:
    """One TCP connection from an adb server: the handshake, then streams to services."""

    def __init__(self, sock: socket.socket, banner: str, opener: Callable[[str], Service | None],
                 ack_delay: Callable[[int], float]) -> None:
        self.sock, self.banner, self.opener, self.ack_delay = sock, banner, opener, ack_delay
        self.max_payload = 4096
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.lock = threading.Lock()
        self.dead = threading.Event()

    def send(self, message: Message) -> None:
        with self.lock:
            if self.dead.is_set():
                raise WireError("connection closed")
            self.sock.sendall(message.pack())

    def forget(self, stream: Stream) -> None:
        self.streams.pop(stream.local, None)

    def serve(self) -> None:
        try:
            while True:
                self.handle(read_message(self.sock))
        except (OSError, WireError, struct.error):
            pass
        finally:
            self.drop()

    def drop(self) -> None:
        self.dead.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        for stream in list(self.streams.values()):
            stream.peer_closed()

    def handle(self, msg: Message) -> None:
        answer = _ANSWERS.get(msg.command)  # others (AUTH, SYNC) are not answered
        if answer is not None:
            answer(self, msg)

    def _connected(self, msg: Message) -> None:  # CNXN
        self.max_payload = max(4096, min(msg.arg1, MAX_PAYLOAD))
        self.send(Message(A_CNXN, A_VERSION, MAX_PAYLOAD, self.banner.encode() + b"\0"))

    def _opened(self, msg: Message) -> None:  # OPEN
        name = msg.data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        service = self.opener(name)
        if service is None:
            self.send(Message(A_CLSE, 0, msg.arg0))
            return
        local, self.next_id = self.next_id, self.next_id + 1
        stream = self.streams[local] = Stream(self, local, msg.arg0, name)
        self.send(Message(A_OKAY, local, msg.arg0))
        threading.Thread(target=self._run, args=(service, stream), daemon=True,
                         name=f"adb {name[:30]}").start()

    def _acknowledged(self, msg: Message) -> None:  # OKAY
        stream = self.streams.get(msg.arg1)
        if stream is not None:
            stream.acked.set()

    def _written(self, msg: Message) -> None:  # WRTE
        stream = self.streams.get(msg.arg1)
        if stream is None:
            return
        stream.incoming.put(msg.data)
        pause = self.ack_delay(len(msg.data))  # a slow link answers late
        if pause:
            time.sleep(pause)
        self.send(Message(A_OKAY, stream.local, stream.remote))

    def _closed(self, msg: Message) -> None:  # CLSE
        stream = self.streams.pop(msg.arg1, None)
        if stream is not None:
            stream.peer_closed()
            if not stream.closed.is_set():
                stream.closed.set()
                with contextlib.suppress(OSError, WireError):
                    self.send(Message(A_CLSE, stream.local, stream.remote))

    def _run(self, service: Service, stream: Stream) -> None:
        try:
            service(stream)
        except (OSError, WireError):
            pass
        finally:
            stream.close()


_ANSWERS: dict[int, Callable[[Connection, Message], None]] = {
    A_CNXN: Connection._connected, A_OPEN: Connection._opened,
    A_OKAY: Connection._acknowledged, A_WRTE: Connection._written, A_CLSE: Connection._closed,
}


class AdbListener:
    """Accepts adb servers on HOST:PORT while `up`; `down()` drops every connection and stops
    listening (a reboot), `up()` listens again on the same address."""

    def __init__(self, host: str, port: int, banner: str,
                 opener: Callable[[str], Service | None],
                 ack_delay: Callable[[int], float] = lambda size: 0.0) -> None:
        self.host, self.port, self.banner = host, port, banner
        self.opener, self.ack_delay = opener, ack_delay
        self.sock: socket.socket | None = None
        self.connections: list[Connection] = []
        self.guard = threading.Lock()

    def up(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(8)
        self.port = sock.getsockname()[1]
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True,
                         name="adb listener").start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(client, self.banner, self.opener, self.ack_delay)
            with self.guard:
                if self.sock is not sock:  # went down meanwhile
                    conn.drop()
                    return
                self.connections.append(conn)
            threading.Thread(target=conn.serve, daemon=True, name="adb connection").start()

    def down(self) -> None:
        with self.guard:
            sock, self.sock = self.sock, None
            connections, self.connections = self.connections, []
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for conn in connections:
            conn.drop()


# --- the sync service ---------------------------------------------------------------------


class SyncFailure(Exception):
    """A sync request the module refuses: the text goes back in a FAIL reply."""


class SyncFiles:
    """What the sync service reads and writes: the module's business."""

    def stat(self, path: str) -> tuple[int, int, int]:  # mode, size, mtime; mode 0: none
        raise NotImplementedError

    def receive(self, path: str, mode: int, data: bytes) -> None:  # a SEND completed
        raise NotImplementedError

    def read(self, path: str) -> bytes:  # RECV
        raise NotImplementedError

    def listdir(self, path: str) -> list[tuple[str, int, int, int]]:  # name, mode, size, mtime
        raise NotImplementedError


def _sync_reply(tag: bytes, length: int, data: bytes = b"") -> bytes:
    return tag + struct.pack("<I", length) + data


@dataclass(frozen=True)
class SyncSession:
    """One sync service stream: each request read and answered from `files`. `pace(n)` is
    called for every n bytes sent (a slow link sleeps there)."""

    stream: Stream
    files: SyncFiles
    pace: Callable[[int], None]

    def fail(self, text: str) -> None:
        data = text.encode()
        self.stream.write(_sync_reply(b"FAIL", len(data), data))

    def stat(self, path: str) -> None:
        mode, size, mtime = self.files.stat(path)
        self.stream.write(b"STAT" + struct.pack("<III", mode, size, mtime))

    def list(self, path: str) -> None:
        out = b""
        for name, mode, size, mtime in self.files.listdir(path):
            raw = name.encode("utf-8", "surrogateescape")
            out += b"DENT" + struct.pack("<IIII", mode, size, mtime, len(raw)) + raw
        self.stream.write(out + b"DONE" + bytes(16))

    def recv(self, path: str) -> None:
        try:
            data = self.files.read(path)
        except SyncFailure as exc:
            self.fail(str(exc))
            return
        for at in range(0, len(data), SYNC_DATA_MAX):
            chunk = data[at:at + SYNC_DATA_MAX]
            self.pace(len(chunk))
            self.stream.write(_sync_reply(b"DATA", len(chunk), chunk))
        self.stream.write(_sync_reply(b"DONE", 0))

    def send(self, path: str) -> None:
        name, _, mode_text = path.rpartition(",")
        parts = []
        while True:
            sub = self.stream.read_exact(8)
            subtag, size = sub[:4], struct.unpack("<I", sub[4:])[0]
            if subtag == b"DATA":
                parts.append(self.stream.read_exact(size))
            elif subtag == b"DONE":
                break
            else:
                raise WireError(f"unexpected {subtag!r} in SEND")
        try:
            self.files.receive(name or path, int(mode_text or "0"), b"".join(parts))
        except SyncFailure as exc:
            self.fail(str(exc))
            return
        self.stream.write(_sync_reply(b"OKAY", 0))


_SYNC_REQUESTS: dict[bytes, Callable[[SyncSession, str], None]] = {
    b"STAT": SyncSession.stat, b"LIST": SyncSession.list, b"RECV": SyncSession.recv,
    b"SEND": SyncSession.send,
}


def sync_session(stream: Stream, files: SyncFiles,
                 pace: Callable[[int], None] = lambda size: None) -> None:
    """Answer sync requests until QUIT or the stream closes. `pace(n)` is called for every
    n bytes sent (a slow link sleeps there)."""
    session = SyncSession(stream, files, pace)
    while True:
        try:
            head = stream.read_exact(8)
        except WireError:
            return
        tag, length = head[:4], struct.unpack("<I", head[4:])[0]
        if tag == b"QUIT":
            return
        body = stream.read_exact(length) if length else b""
        request = _SYNC_REQUESTS.get(tag)
        if request is None:
            session.fail(f"unknown sync request {tag!r}")
            return
        request(session, body.decode("utf-8", "surrogateescape"))
