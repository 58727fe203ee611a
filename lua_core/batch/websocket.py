"""A minimal RFC 6455 websocket client on the standard library (enough for ComfyUI's ``/ws``).

Why not a dependency: the batch client only *reads* ComfyUI's JSON event stream (and answers pings), so
the protocol subset is small: one handshake, unmasked server frames (text, binary, continuation, ping,
pong, close) and masked client frames. Keeping it here means the pack's runtime dependencies stay
``tqdm`` plus the standard library, and the client runs where ``aiohttp`` or ``websocket-client`` are
absent. Everything the websocket gives is also available by polling ``/history`` and ``/queue``; the
runner falls back to polling whenever this connection is down, so a failure here costs progress
display, never a job.

No extensions (no permessage-deflate), no proxies. ``wss://`` uses :mod:`ssl`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import threading
import urllib.parse
from collections.abc import Mapping

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_MESSAGE = 256 * 1024 * 1024  # previews are a few MB; anything near this is a broken stream

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketClosed(OSError):
    """The connection is closed (by either side, or the network)."""


class WebSocket:
    """A connected client websocket. Use :meth:`connect`; :meth:`recv` blocks until a data message.

    :meth:`close` may be called from another thread to unblock a thread waiting in :meth:`recv`.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._rfile = sock.makefile("rb")
        self._send_lock = threading.Lock()
        self._closed = False

    @classmethod
    def connect(cls, url: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0,
                ssl_context: ssl.SSLContext | None = None) -> WebSocket:
        """Open ``ws://`` or ``wss://`` ``url`` and do the opening handshake (``headers`` are sent with it)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"not a websocket URL: {url}")
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if secure:
                ctx = ssl_context or ssl.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=host)
            key = base64.b64encode(os.urandom(16)).decode()
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host_header = host if parts.port is None else f"{host}:{parts.port}"
            lines = [f"GET {path} HTTP/1.1", f"Host: {host_header}", "Upgrade: websocket",
                     "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            ws = cls(sock)
            status_line = ws._rfile.readline(65536).decode("latin-1").strip()
            response: dict[str, str] = {}
            while True:
                line = ws._rfile.readline(65536).decode("latin-1")
                if line in ("\r\n", "\n", ""):
                    break
                name, _, value = line.partition(":")
                response[name.strip().lower()] = value.strip()
            if not status_line.startswith("HTTP/1.1 101") and not status_line.startswith("HTTP/1.0 101"):
                raise WebSocketClosed(f"websocket handshake refused: {status_line or 'no answer'}")
            expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
            if response.get("sec-websocket-accept") != expected:
                raise WebSocketClosed("websocket handshake: bad Sec-WebSocket-Accept")
            sock.settimeout(None)  # ComfyUI sends nothing while idle; close() unblocks readers
            return ws
        except BaseException:
            sock.close()
            raise

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        data = self._rfile.read(n) if n else b""
        if len(data) < n:
            raise WebSocketClosed("connection closed by the server")
        return data

    def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._read(2)
        fin, opcode, masked, length = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._read(8))
        if length > _MAX_MESSAGE:
            raise WebSocketClosed(f"websocket frame too large ({length} bytes)")
        mask = self._read(4) if masked else b""
        payload = self._read(length)
        if masked:
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        return fin, opcode, payload

    def recv(self) -> str | bytes:
        """The next data message (``str`` for text, ``bytes`` for binary). Answers pings on the way."""
        if self._closed:
            raise WebSocketClosed("websocket already closed")
        try:
            message_op, chunks, size = None, [], 0
            while True:
                fin, opcode, payload = self._frame()
                if opcode == OP_PING:
                    self._send(OP_PONG, payload)
                    continue
                if opcode == OP_PONG:
                    continue
                if opcode == OP_CLOSE:
                    try:
                        self._send(OP_CLOSE, payload[:2])
                    except OSError:
                        pass
                    raise WebSocketClosed("websocket closed by the server")
                if opcode in (OP_TEXT, OP_BINARY):
                    message_op, chunks, size = opcode, [payload], len(payload)
                elif opcode == OP_CONT and message_op is not None:
                    chunks.append(payload)
                    size += len(payload)
                else:
                    raise WebSocketClosed(f"websocket protocol error (opcode {opcode})")
                if size > _MAX_MESSAGE:
                    raise WebSocketClosed("websocket message too large")
                if fin:
                    data = b"".join(chunks)
                    return data.decode("utf-8") if message_op == OP_TEXT else data
        except (OSError, ValueError) as err:
            self._closed = True
            if isinstance(err, WebSocketClosed):
                raise
            raise WebSocketClosed(str(err)) from err

    # -- writing ---------------------------------------------------------------------------------

    def _send(self, opcode: int, payload: bytes) -> None:
        header = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header.append(0x80 | 126)
            header += struct.pack(">H", n)
        else:
            header.append(0x80 | 127)
            header += struct.pack(">Q", n)
        mask = os.urandom(4)
        header += mask
        body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        with self._send_lock:
            self._sock.sendall(bytes(header) + body)

    def send_text(self, text: str) -> None:
        """Send one text message."""
        self._send(OP_TEXT, text.encode("utf-8"))

    def close(self) -> None:
        """Close the connection (idempotent; safe from another thread)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._send(OP_CLOSE, struct.pack(">H", 1000))
        except OSError:
            pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
