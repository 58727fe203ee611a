"""Errors of the batch client.

Why a hierarchy: the CLI (``python -m lua_core``) prints any ``ValueError`` as ``error: ...`` and exits 1,
so every mistake a user can fix (a bad workflow, an unknown node in ``--set``, a rejected prompt) is a
:class:`BatchError` (a ``ValueError``) with an actionable message. :class:`ServerUnreachable` is the one
the runner retries with backoff (connection refused or reset, timeouts, 502/503/504): it means "try again
later", not "your input is wrong".
"""

from __future__ import annotations

from typing import Any


class BatchError(ValueError):
    """Something the user can fix: the message says what and how."""


class WorkflowError(BatchError):
    """The workflow file cannot be read or converted to the API format."""


class SweepError(BatchError):
    """A ``--set`` option or sweep file is malformed or names a node/input that does not exist."""


class ServerUnreachable(BatchError):
    """The server did not answer (connection refused/reset, timeout, 502/503/504): retried by the runner."""

    @property
    def refused(self) -> bool:
        """The connection was refused: nothing listened on the server's port then, so the process that got
        an earlier request is gone and a prompt it was sent cannot still land (a timeout or reset says
        nothing of the kind)."""
        cause = self.__cause__
        return isinstance(getattr(cause, "reason", cause), ConnectionRefusedError)


class ServerGaveUp(BatchError):
    """The server stayed unreachable longer than the runner was told to wait; re-run to resume."""


class RequestError(BatchError):
    """The server answered an HTTP request with an error status that retrying will not fix."""

    def __init__(self, method: str, path: str, status: int, body: bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        super().__init__(f"{method} {path} -> HTTP {status}: {text[:500]}")
        self.status = status
        self.body = text


class PromptRejected(BatchError):
    """``POST /prompt`` answered 400: the prompt failed validation (``error`` and per-node ``node_errors``)."""

    def __init__(self, error: Any, node_errors: dict[str, Any]):
        self.error = error if isinstance(error, dict) else {"message": str(error)}
        self.node_errors = node_errors or {}
        super().__init__(self.error.get("message") or "prompt rejected")
