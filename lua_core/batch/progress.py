"""Progress display: one overall bar, plus one bar per running job (one server) or one line per server
(several servers) (tqdm), or plain log lines.

Why separate from the runner: the runner reports *events* (queued, node finished, job done, message);
how they look depends on where the output goes. On a terminal that is tqdm bars; in a log file, a CI
job or a test, bars would be noise, so each finished job is one line instead. Messages always go to
stderr, so stdout stays free for ``--dry-run`` listings. With a farm, per-job bars would be a screenful,
so each server gets one status line instead (jobs done, running, its rate). Events come from one
thread per server, so every method takes a lock.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from tqdm import tqdm

from .servers import short_name


class Progress:
    """Progress for ``total`` jobs. ``bars=None`` shows bars only when ``stream`` is a terminal."""

    def __init__(self, total: int, *, bars: bool | None = None, stream: TextIO | None = None,
                 quiet: bool = False, servers: Sequence[str] = ()):
        self.stream = stream or sys.stderr
        self.bars = (self.stream.isatty() if bars is None else bars) and not quiet
        self.quiet = quiet
        self.total = total
        self.done = 0
        self.farm = len(servers) > 1
        self._lock = threading.RLock()
        self._overall = tqdm(total=total, desc="batch", unit="job", position=0, file=self.stream,
                             dynamic_ncols=True) if self.bars else None
        self._jobs: dict[str, Any] = {}
        self._slots: list[str | None] = []
        self._servers: dict[str, Any] = {}
        if self._overall is not None and self.farm:
            for i, url in enumerate(servers):
                self._servers[url] = tqdm(total=0, desc=short_name(url), position=i + 1, leave=False,
                                          file=self.stream, dynamic_ncols=True, bar_format="{desc}")

    def message(self, text: str) -> None:
        """A line for the user (errors, warnings, retries); never hidden, even with ``quiet``."""
        with self._lock:
            if self._overall is not None:
                tqdm.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def server_status(self, url: str, text: str) -> None:
        """The status line of one server of a farm (shown with bars only; the summary repeats it)."""
        with self._lock:
            bar = self._servers.get(url)
            if bar is not None and bar.desc != text:
                bar.set_description_str(text)

    def job_started(self, key: str, label: str, nodes: int) -> None:
        """A job began executing on the server (``nodes`` = nodes in its prompt)."""
        with self._lock:
            self._job_started(key, label, nodes)

    def _job_started(self, key: str, label: str, nodes: int) -> None:
        if self._overall is None or self.farm or key in self._jobs:
            return
        slot = self._slots.index(None) if None in self._slots else len(self._slots)
        if slot == len(self._slots):
            self._slots.append(key)
        else:
            self._slots[slot] = key
        self._jobs[key] = tqdm(total=max(nodes, 1), desc=label[:40], position=slot + 1, leave=False,
                               file=self.stream, dynamic_ncols=True,
                               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} nodes [{elapsed}{postfix}]")

    def job_progress(self, key: str, finished_nodes: int, detail: str = "") -> None:
        """``finished_nodes`` of the job's nodes are done; ``detail`` e.g. ``KSampler 12/20``."""
        with self._lock:
            bar = self._jobs.get(key)
            if bar is None:
                return
            if detail:
                bar.set_postfix_str(detail, refresh=False)
            bar.update(min(finished_nodes, bar.total) - bar.n)  # refreshes

    def job_finished(self, key: str, line: str) -> None:
        """A job reached a final status; ``line`` describes it (printed in plain mode)."""
        with self._lock:
            self.done += 1
            bar = self._jobs.pop(key, None)
            if bar is not None:
                bar.close()
                self._slots[self._slots.index(key)] = None
            if self._overall is not None:
                self._overall.update(1)
            elif not self.quiet:
                print(f"[{self.done}/{self.total}] {line}", file=self.stream, flush=True)

    def close(self) -> None:
        with self._lock:
            for bar in [*self._jobs.values(), *self._servers.values()]:
                bar.close()
            self._jobs.clear()
            self._servers.clear()
            if self._overall is not None:
                self._overall.close()
