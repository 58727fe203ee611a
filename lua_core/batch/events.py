"""A background reader of one server's ``/ws?clientId=`` event stream.

Why a thread: ComfyUI pushes execution events (start, progress, done) only over the websocket, and a
read blocks until the server says something. One pump per server puts what it reads on a queue that
the server's worker drains between requests; when the connection drops (a restarting server) the pump
says so and reconnects with backoff. Losing the websocket costs progress display only: every decision
is also checked against ``/queue`` and ``/history``.
"""

from __future__ import annotations

import json
import queue
import threading

from .client import ComfyClient
from .errors import ServerUnreachable


class EventPump(threading.Thread):
    """Reads ``/ws?clientId=`` in the background and queues ``("msg", data)`` / ``("ws", "up"|"down")``."""

    def __init__(self, client: ComfyClient, client_id: str, events: queue.Queue):
        super().__init__(name=f"comfy-batch-ws {client.base_url}", daemon=True)
        self.client, self.client_id, self.events = client, client_id, events
        self._halt = threading.Event()
        self._ws = None

    def run(self) -> None:
        delay = 0.5
        while not self._halt.is_set():
            try:
                ws = self.client.connect_ws(self.client_id, timeout=min(self.client.timeout, 10.0))
            except (ServerUnreachable, OSError):
                self._halt.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._ws, delay = ws, 0.5
            self.events.put(("ws", "up"))
            try:
                while not self._halt.is_set():
                    message = ws.recv()
                    if isinstance(message, str):
                        try:
                            self.events.put(("msg", json.loads(message)))
                        except json.JSONDecodeError:
                            continue
            except OSError:
                pass
            finally:
                ws.close()
                self._ws = None
            if not self._halt.is_set():
                self.events.put(("ws", "down"))

    def stop(self) -> None:
        self._halt.set()
        ws = self._ws
        if ws is not None:
            ws.close()
        self.join(timeout=5)
