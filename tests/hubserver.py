"""A local stand-in for huggingface.co and GitHub file URLs, so download code is tested for real.

Why a real server and not mocks: resume, redirects, offline mode and error mapping live in the
HTTP exchanges themselves (headers the hub library insists on, Range/206, a connection that dies
half way), and only a socket shows whether the code under test gets them right.

What it answers (stdlib ``http.server`` in a daemon thread on 127.0.0.1, an ephemeral port):

* Hugging Face: ``HEAD|GET /{repo}/resolve/{revision}/{filename}`` where ``revision`` is ``main``
  or the repo's commit. Large ("LFS") files answer ``302`` with ``X-Repo-Commit``,
  ``X-Linked-Etag`` (the sha256), ``X-Linked-Size`` and a ``Location`` on ``/lfs/{sha256}``, as the
  hub does; small files answer ``200`` with ``ETag`` and ``Content-Length``. A missing file is
  ``404`` with ``X-Error-Code: EntryNotFound``; an unknown repo ``401`` with ``RepoNotFound``; an
  unknown revision ``404`` with ``RevisionNotFound``.
* GitHub: ``/github.com/{owner}/{repo}/raw/{ref}/{path}`` redirects (``302``) to
  ``/raw.githubusercontent.com/{owner}/{repo}/{ref}/{path}``, which serves the bytes, as
  github.com sends its raw links to the raw host.
* Every blob honours ``Range: bytes=START-[END]`` (``206`` + ``Content-Range``; ``416`` past the end).

Faults, for tests: ``interrupt(path, after_bytes, times)`` sends the full ``Content-Length`` but
closes the connection after ``after_bytes`` body bytes, for the next ``times`` GETs of that blob;
``hang(path, seconds)`` delays the answer (timeouts). Every request is recorded (method, path,
headers) so tests can assert what a client asked for, or that it asked nothing at all.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["HubServer", "Request"]


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0  # body bytes actually written (less than promised when interrupted)

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class _Blob:
    data: bytes
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()


@dataclass
class _Repo:
    commit: str
    files: dict[str, tuple[_Blob, bool]] = field(default_factory=dict)  # filename -> (blob, lfs)


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class HubServer:
    """Serve Hugging Face-style and GitHub-style files from memory; use as a context manager."""

    def __init__(self) -> None:
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, _Blob] = {}  # URL path -> blob (LFS objects and GitHub raw files)
        self._redirects: dict[str, str] = {}  # URL path -> URL path
        self._interrupts: dict[str, list[int]] = {}  # URL path -> [after_bytes, times_left]
        self._hangs: dict[str, float] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()  # wakes hanging handlers at stop()
        self.requests: list[Request] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hubserver",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (what ``HF_ENDPOINT`` is set to)."""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- content -----------------------------------------------------------------------------
    def add_hf_file(self, repo: str, filename: str, data: bytes, *, lfs: bool = True) -> str:
        """Serve ``data`` as ``{repo}/resolve/{main|commit}/{filename}``; returns the blob's URL path."""
        with self._lock:
            r = self._repos.setdefault(repo, _Repo(hashlib.sha1(repo.encode()).hexdigest()))
            blob = _Blob(data)
            r.files[filename] = (blob, lfs)
            if lfs:
                self._blobs[f"/lfs/{blob.sha256}"] = blob
                return f"/lfs/{blob.sha256}"
            return f"/{repo}/resolve/{r.commit}/{filename}"

    def commit(self, repo: str) -> str:
        """The 40-hex commit the server reports for ``repo`` (``X-Repo-Commit``)."""
        return self._repos[repo].commit

    def add_github_file(self, owner_repo: str, ref: str, path: str, data: bytes) -> str:
        """Serve ``data`` behind a github.com-style ``/raw/`` URL; returns that full URL."""
        raw = f"/raw.githubusercontent.com/{owner_repo}/{ref}/{path}"
        gh = f"/github.com/{owner_repo}/raw/{ref}/{path}"
        with self._lock:
            self._blobs[raw] = _Blob(data)
            self._redirects[gh] = raw
        return self.url + gh

    def add_url_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path`` directly (no redirect); returns the full URL."""
        with self._lock:
            self._blobs[path] = _Blob(data)
        return self.url + path

    def blob_path(self, url_or_path: str) -> str:
        """The URL path that finally serves the bytes of a GitHub-style URL, an HF file or a path."""
        path = urlsplit(url_or_path).path
        return self._redirects.get(path, path)

    # -- faults ------------------------------------------------------------------------------
    def interrupt(self, url_or_path: str, after_bytes: int, times: int = 1) -> None:
        """Cut the next ``times`` GETs of this blob after ``after_bytes`` body bytes."""
        with self._lock:
            self._interrupts[self.blob_path(url_or_path)] = [after_bytes, times]

    def hang(self, url_or_path: str, seconds: float) -> None:
        """Wait ``seconds`` before answering requests for this path (to trigger client timeouts)."""
        with self._lock:
            self._hangs[urlsplit(url_or_path).path] = seconds

    # -- inspection --------------------------------------------------------------------------
    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def gets(self, path_part: str = "") -> list[Request]:
        """Recorded GETs whose path contains ``path_part``."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and path_part in r.path]

    def heads(self, path_part: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == "HEAD" and path_part in r.path]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.0"  # one request per connection: a cut transfer cannot poison the next

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep pytest output quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    # -----------------------------------------------------------------------------------------
    def _answer(self, head: bool) -> None:
        hub = self.hub
        path = unquote(urlsplit(self.path).path)
        rec = Request(self.command, path, {k.lower(): v for k, v in self.headers.items()})
        with hub._lock:
            hub.requests.append(rec)
            delay = hub._hangs.get(path, 0.0)
        if delay:
            hub._release.wait(delay)
        if path in hub._redirects:
            return self._send(rec, 302, {"Location": hub.url + hub._redirects[path], "Content-Length": "0"})
        if path in hub._blobs:
            return self._send_blob(rec, hub._blobs[path], head, {"ETag": f'"{hub._blobs[path].sha256}"'})
        m = re.match(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", path)
        if m:
            return self._resolve(rec, m["repo"], m["rev"], m["file"], head)
        self._send(rec, 404, {"Content-Length": "0"})

    def _resolve(self, rec: Request, repo_id: str, rev: str, filename: str, head: bool) -> None:
        repo = self.hub._repos.get(repo_id)
        if repo is None:
            return self._send(rec, 401, {"X-Error-Code": "RepoNotFound",
                                         "X-Error-Message": "Repository not found", "Content-Length": "0"})
        if rev not in ("main", repo.commit):
            return self._send(rec, 404, {"X-Error-Code": "RevisionNotFound",
                                         "X-Error-Message": "Invalid rev id", "Content-Length": "0"})
        if filename not in repo.files:
            return self._send(rec, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit,
                                         "X-Error-Message": "Entry not found", "Content-Length": "0"})
        blob, lfs = repo.files[filename]
        if lfs:
            return self._send(rec, 302, {
                "Location": f"{self.hub.url}/lfs/{blob.sha256}", "X-Repo-Commit": repo.commit,
                "X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data)),
                "ETag": f'"{hashlib.sha1(blob.data).hexdigest()}"', "Content-Length": "0"})
        git_sha = hashlib.sha1(b"blob %d\0" % len(blob.data) + blob.data).hexdigest()
        self._send_blob(rec, blob, head, {"X-Repo-Commit": repo.commit, "ETag": f'"{git_sha}"'})

    def _send(self, rec: Request, status: int, headers: dict[str, str]) -> None:
        rec.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _send_blob(self, rec: Request, blob: _Blob, head: bool, headers: dict[str, str]) -> None:
        size = len(blob.data)
        start, end, status = 0, size - 1, 200
        rng = rec.headers.get("range")
        if rng:
            m = _RANGE.match(rng.strip())
            if m is None:
                return self._send(rec, 416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
            start = int(m[1])
            end = min(int(m[2]), size - 1) if m[2] else size - 1
            if start >= size or start > end:
                return self._send(rec, 416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
        body = blob.data[start:end + 1]
        self._send(rec, status, {**headers, "Accept-Ranges": "bytes", "Content-Length": str(len(body)),
                                 "Content-Type": "application/octet-stream"})
        if head:
            return
        cut = None
        with self.hub._lock:
            fault = self.hub._interrupts.get(rec.path)
            if fault and fault[1] > 0:
                cut, fault[1] = fault[0], fault[1] - 1
        if cut is not None and cut < len(body):
            body = body[:cut]
            self.close_connection = True
        try:
            self.wfile.write(body)
            self.wfile.flush()
            rec.body_bytes = len(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


if __name__ == "__main__":  # a quick manual check: python tests/hubserver.py FILE...
    import sys
    import time

    with HubServer() as s:
        for f in sys.argv[1:]:
            s.add_hf_file("local/test", Path(f).name, Path(f).read_bytes())
            print(f"{s.url}/local/test/resolve/main/{Path(f).name}")
        print(f"HF_ENDPOINT={s.url}  (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
