"""Which ComfyUI servers a batch runs on: ``--server URL`` (repeatable) and ``--servers FILE``.

Why a module: a farm is given as a list of URLs, some behind a proxy that wants its own token, and the
list must be checked before anything is sent. A mistake here (a typo in a URL, a server given twice, a
token variable that is not set) would otherwise show up as a server that never answers, so every
problem is a :class:`BatchError` naming the option or the file line, the value and the fix.

``--servers FILE``: one server per line, ``URL [TOKEN]``; ``#`` starts a comment, blank lines are
skipped. ``TOKEN`` is ``env:NAME`` (or ``$NAME``) to read a bearer token from the environment variable
``NAME``, or the token itself (then the file should be readable by you only; a warning says so
otherwise). A server's token replaces ``--token-env`` for that server.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .client import ComfyClient
from .errors import BatchError

DEFAULT_SERVER = "http://127.0.0.1:8188"


@dataclass(frozen=True)
class ServerSpec:
    """One server of the farm: its URL, an optional bearer token, and where it was given (for messages)."""

    url: str
    token: str | None = None
    source: str = "--server"


def normalize_url(url: str) -> str:
    """The form URLs are compared in (and written to the manifest): what :class:`ComfyClient` keeps."""
    parts = urllib.parse.urlsplit(url.strip())
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


def short_name(url: str) -> str:
    """``http://10.0.0.5:8188/comfy`` -> ``10.0.0.5:8188/comfy``: how progress lines name a server."""
    parts = urllib.parse.urlsplit(url)
    return (parts.netloc + parts.path) or url


def _check_url(url: str, where: str) -> str:
    """``url`` normalised, or a :class:`BatchError` naming ``where``, the value and what is wrong with it."""
    parts = urllib.parse.urlsplit(url.strip())
    form = "write it as http://host:port or https://host[/prefix]"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BatchError(f"{where}: {url!r} is not a server URL; {form}")
    try:
        port = parts.port
    except ValueError as err:  # "host:abc", "host:99999"
        raise BatchError(f"{where}: {url!r} has a bad port ({err}); {form}") from err
    host = parts.hostname or ""
    if not host or any(c.isspace() or c in "<>\\\"'{}|^`" for c in host):
        raise BatchError(f"{where}: {url!r} names no valid host; {form}")
    if port == 0:
        raise BatchError(f"{where}: {url!r} has port 0; {form}")
    if parts.username is not None or parts.password is not None:
        raise BatchError(f"{where}: {url!r} holds credentials, which would be printed in messages and written to "
                         "the manifest; remove them and give a bearer token instead (the second field of a "
                         "--servers line, or --token-env)")
    if parts.query or parts.fragment or url.strip().endswith(("?", "#")):
        raise BatchError(f"{where}: {url!r} has a query or fragment; a server URL is only "
                         "http(s)://host:port[/prefix]")
    return normalize_url(url)


def server_identity(url: str) -> tuple[str, str, int, str]:
    """What makes two URLs the same server: ``http://A:80/`` and ``http://a`` are one (default ports filled in)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port, parts.path.rstrip("/")


def read_servers_file(path: str | os.PathLike, warnings: list[str] | None = None) -> list[ServerSpec]:
    """The servers listed in ``path`` (see module doc). Raises :class:`BatchError` naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise BatchError(f"--servers {path}: cannot read it ({err.strerror or err}); give a file with one "
                         "server URL per line") from err
    specs: list[ServerSpec] = []
    literal_token = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"--servers {path} line {number}"
        fields = line.split()
        if len(fields) > 2:
            raise BatchError(f"{where}: expected 'URL [TOKEN]', got {len(fields)} fields ({line!r}); "
                             "tokens cannot contain spaces")
        url = _check_url(fields[0], where)
        token = None
        if len(fields) == 2 and "://" in fields[1]:
            raise BatchError(f"{where}: the second field {fields[1]!r} looks like a URL; give one server per line "
                             "('URL [TOKEN]')")
        if len(fields) == 2:
            token, from_env = _token(fields[1], where)
            literal_token = literal_token or not from_env
        specs.append(ServerSpec(url, token, f"{path} line {number}"))
    if not specs:
        raise BatchError(f"--servers {path} lists no servers; write one URL per line (http://host:port)")
    if literal_token and warnings is not None and _readable_by_others(path):
        warnings.append(f"{path} holds tokens and can be read by other users; restrict it with: chmod 600 {path}")
    return specs


def _token(field: str, where: str) -> tuple[str, bool]:
    """``(token, came from the environment)`` for the second field of a servers-file line."""
    name = field[4:] if field.startswith("env:") else field[1:] if field.startswith("$") else None
    if name is None:
        return field, False
    if not name:
        raise BatchError(f"{where}: {field!r} names no environment variable; write env:NAME")
    value = os.environ.get(name, "").strip()
    if not value:
        raise BatchError(f"{where}: environment variable {name} is not set or empty; export it, or remove "
                         "the token from that line")
    return value, True


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def server_specs(servers: Sequence[str] | str | None = None, servers_file: str | os.PathLike | None = None,
                 warnings: list[str] | None = None) -> list[ServerSpec]:
    """The farm from ``--server`` values and ``--servers FILE``, in that order.

    Neither given: ``$COMFYUI_URL``, else ``http://127.0.0.1:8188`` (the single-server default). A server
    given twice (after normalising the URL) is refused.
    """
    if isinstance(servers, str):
        servers = [servers]
    specs = [ServerSpec(_check_url(url, "--server"), None, "--server") for url in servers or ()]
    if servers_file is not None:
        specs += read_servers_file(servers_file, warnings)
    if not specs:
        specs = [ServerSpec(_check_url(os.environ.get("COMFYUI_URL") or DEFAULT_SERVER, "$COMFYUI_URL"))]
    seen: dict[tuple[str, str, int, str], ServerSpec] = {}
    for spec in specs:
        key = server_identity(spec.url)
        first = seen.get(key)
        if first is not None:
            same = spec.url if first.url == spec.url else f"{first.url} (= {spec.url})"
            raise BatchError(f"server {same} is given twice ({first.source} and {spec.source}); "
                             "give each server once")
        seen[key] = spec
    return specs


def make_clients(specs: Iterable[ServerSpec], *, headers: Mapping[str, str] | None = None, timeout: float = 30.0,
                 verify_tls: bool = True) -> list[ComfyClient]:
    """One :class:`ComfyClient` per server; a server's own token replaces the shared Authorization header."""
    clients = []
    for spec in specs:
        hdrs = dict(headers or {})
        if spec.token:
            hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            hdrs["Authorization"] = f"Bearer {spec.token}"
        clients.append(ComfyClient(spec.url, headers=hdrs, timeout=timeout, verify_tls=verify_tls))
    return clients
