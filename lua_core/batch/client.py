"""HTTP (and websocket) access to one ComfyUI server: the endpoints the batch runner needs, nothing more.

Why a thin class of its own: the runner must tell apart three kinds of failure and treat them
differently, and that classification belongs in one place:

* the server is away (connection refused/reset, timeout, 502/503/504) -> :class:`ServerUnreachable`,
  which the runner retries with backoff (a restarting server, a flaky tunnel);
* the server refused the prompt (HTTP 400 on ``POST /prompt``) -> :class:`PromptRejected` with the
  server's ``node_errors``, reported per job;
* anything else -> :class:`RequestError`.

Standard library only (``urllib``), so it works wherever Python does; ``https`` and extra headers (an
``Authorization`` bearer token for a remote server behind a proxy) are supported for every request,
the websocket included. Endpoint behaviour is ComfyUI 0.3.75's ``server.py``: ``POST /prompt`` takes a
client-chosen ``prompt_id`` (the server does *not* deduplicate ids, so the runner checks ``/queue`` and
``/history`` before re-sending), ``POST /queue {"delete": [...]}`` removes pending items only, and
``POST /interrupt {"prompt_id": ...}`` interrupts only if that prompt is the one running.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import PromptRejected, RequestError, ServerUnreachable
from .websocket import WebSocket

TRANSIENT_STATUS = frozenset({502, 503, 504})
_CONNECTION_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
                      http.client.HTTPException, ssl.SSLError, OSError)


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` -> ``("Name", "value")`` (for ``--header``); raises ValueError when malformed."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise ValueError(f"--header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


class ComfyClient:
    """One ComfyUI server at ``base_url`` (``http(s)://host:port[/prefix]``).

    ``headers`` go with every request (HTTP and websocket); ``timeout`` is the per-request socket
    timeout in seconds. ``verify_tls=False`` accepts self-signed certificates.
    """

    def __init__(self, base_url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 30.0,
                 verify_tls: bool = True):
        parts = urllib.parse.urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"server URL must be http://host:port or https://host[/prefix], got {base_url!r}")
        self.base_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.headers = dict(headers or {})
        self.timeout = float(timeout)
        self.ssl_context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl_context = ssl.create_default_context()
            if not verify_tls:
                self.ssl_context.check_hostname = False
                self.ssl_context.verify_mode = ssl.CERT_NONE

    def __repr__(self) -> str:  # never show headers: they may carry a token
        return f"ComfyClient({self.base_url!r})"

    # -- plumbing --------------------------------------------------------------------------------

    def _open(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout, context=self.ssl_context)
        except urllib.error.HTTPError as err:
            payload = err.read()
            if err.code in TRANSIENT_STATUS:
                raise ServerUnreachable(f"{method} {path} -> HTTP {err.code} (server busy or restarting)") from err
            err.payload = payload  # type: ignore[attr-defined]
            raise
        except _CONNECTION_ERRORS as err:
            raise ServerUnreachable(f"{self.base_url}: {method} {path} failed: {_reason(err)}") from err

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[int, bytes]:
        """One request; returns ``(status, body)`` for 2xx and 4xx/5xx alike (except the transient ones)."""
        try:
            with self._open(method, path, body, timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, getattr(err, "payload", b"")
        except _CONNECTION_ERRORS as err:  # a reset while reading the body
            raise ServerUnreachable(f"{self.base_url}: {method} {path} failed: {_reason(err)}") from err

    def get_json(self, path: str, timeout: float | None = None) -> Any:
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise RequestError("GET", path, status, body)
        try:
            return json.loads(body)
        except json.JSONDecodeError as err:
            raise RequestError("GET", path, status, b"not JSON: " + body[:200]) from err

    def post_json(self, path: str, body: Any, timeout: float | None = None) -> tuple[int, Any]:
        status, raw = self.request("POST", path, body, timeout=timeout)
        try:
            return status, (json.loads(raw) if raw else None)
        except json.JSONDecodeError:
            return status, raw.decode("utf-8", "replace")

    # -- endpoints -------------------------------------------------------------------------------

    def system_stats(self) -> dict:
        """``GET /system_stats`` (a cheap liveness check that also names the ComfyUI version)."""
        return self.get_json("/system_stats")

    def object_info(self) -> dict:
        """``GET /object_info``: every node class with its inputs (needed to convert UI workflows)."""
        return self.get_json("/object_info", timeout=max(self.timeout, 120.0))

    def queue(self) -> dict:
        """``GET /queue``: ``{"queue_running": [...], "queue_pending": [...]}`` (items ``[num, id, ...]``)."""
        return self.get_json("/queue")

    def queue_ids(self) -> tuple[list[str], list[str]]:
        """``(running prompt ids, pending prompt ids)`` from ``GET /queue``."""
        q = self.queue()
        return ([str(item[1]) for item in q.get("queue_running", [])],
                [str(item[1]) for item in q.get("queue_pending", [])])

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of ``prompt_id`` (``outputs``, ``status``...), or None if the server has none."""
        data = self.get_json("/history/" + urllib.parse.quote(prompt_id, safe=""))
        return data.get(prompt_id) if isinstance(data, dict) else None

    def submit(self, prompt: Mapping[str, Any], *, prompt_id: str, client_id: str,
               extra_data: Mapping[str, Any] | None = None) -> dict:
        """``POST /prompt`` with a client-chosen ``prompt_id``; returns ``{"prompt_id", "number", "node_errors"}``.

        The answer's ``prompt_id`` is the one the server uses: ours, except on old servers that ignore it.

        Raises :class:`PromptRejected` on HTTP 400 (validation failed), :class:`ServerUnreachable` when
        the request may or may not have reached the server (the caller must look the id up before
        re-sending), :class:`RequestError` otherwise.
        """
        payload: dict[str, Any] = {"prompt": dict(prompt), "client_id": client_id, "prompt_id": prompt_id}
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        status, body = self.post_json("/prompt", payload)
        if status == 400:
            body = body if isinstance(body, dict) else {"error": {"message": str(body)}}
            raise PromptRejected(body.get("error"), body.get("node_errors") or {})
        if status != 200 or not isinstance(body, dict) or not body.get("prompt_id"):
            raise RequestError("POST", "/prompt", status, json.dumps(body) if body is not None else b"")
        return body

    def delete_queued(self, prompt_ids: list[str]) -> None:
        """``POST /queue {"delete": ids}``: removes those ids from the *pending* queue (running ones stay)."""
        if prompt_ids:
            status, body = self.post_json("/queue", {"delete": list(prompt_ids)})
            if status != 200:
                raise RequestError("POST", "/queue", status, str(body))

    def interrupt(self, prompt_id: str) -> None:
        """``POST /interrupt {"prompt_id": id}``: the server interrupts only if ``id`` is the running prompt."""
        status, body = self.post_json("/interrupt", {"prompt_id": prompt_id})
        if status != 200:
            raise RequestError("POST", "/interrupt", status, str(body))

    def download(self, file: Mapping[str, Any], dest: Path) -> int:
        """Fetch one output file (``{"filename", "subfolder", "type"}``) through ``GET /view`` into ``dest``.

        Written to a temporary file in ``dest``'s folder, fsynced, then renamed: ``dest`` is either
        complete or absent, never half-written. Returns the number of bytes.
        """
        query = urllib.parse.urlencode({"filename": file["filename"], "subfolder": file.get("subfolder", ""),
                                        "type": file.get("type", "output")})
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    resp = self._open("GET", "/view?" + query)
                except urllib.error.HTTPError as err:
                    raise RequestError("GET", "/view?" + query, err.code, getattr(err, "payload", b"")) from err
                with resp:
                    while True:
                        try:
                            chunk = resp.read(1 << 20)
                        except _CONNECTION_ERRORS as err:  # disk errors from out.write stay OSErrors
                            raise ServerUnreachable(f"{self.base_url}: GET /view failed: {_reason(err)}") from err
                        if not chunk:
                            break
                        out.write(chunk)
                        size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    # -- websocket -------------------------------------------------------------------------------

    def ws_url(self, client_id: str) -> str:
        parts = urllib.parse.urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + "/ws",
                                        urllib.parse.urlencode({"clientId": client_id}), ""))

    def connect_ws(self, client_id: str, timeout: float | None = None) -> WebSocket:
        """Open ``/ws?clientId=...``: the server then sends this client's execution events."""
        try:
            return WebSocket.connect(self.ws_url(client_id), self.headers, timeout or self.timeout, self.ssl_context)
        except OSError as err:
            raise ServerUnreachable(f"{self.base_url}: websocket failed: {_reason(err)}") from err


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    return str(reason if reason is not None else err) or type(err).__name__
