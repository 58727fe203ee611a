"""Training logs: a console line, a JSON-lines file and TensorBoard (when installed)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunLog:
    """Writes one record per logging interval to ``run_dir/log.jsonl``, the console and TensorBoard.

    TensorBoard is used when ``torch.utils.tensorboard`` imports (the ``tensorboard`` package);
    without it the other two outputs are unchanged.
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True, console: Any = print):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console = console
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.dir / "tb"))
            except ImportError:
                log.info("tensorboard is not installed: logging to log.jsonl and the console only")

    def write(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        rec = {"step": step, **values}
        with open(self.dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)
        if self.console is not None:
            self.console(prefix + format_record(step, values))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def format_record(step: int, values: dict[str, float]) -> str:
    """'step 100 | loss 0.1234 | latent_l1 0.1 ... | lr 2.0e-04 | 3.1 it/s'."""
    parts = [f"step {step}"]
    if "loss" in values:
        parts.append(f"loss {values['loss']:.4g}")
    terms = [f"{k.split('/', 1)[1]} {v:.4g}" for k, v in values.items() if k.startswith("loss/")]
    if terms:
        parts.append(" ".join(terms))
    if "lr" in values:
        parts.append(f"lr {values['lr']:.2e}")
    if "grad_norm" in values:
        parts.append(f"|g| {values['grad_norm']:.3g}")
    if "it_per_s" in values:
        parts.append(f"{values['it_per_s']:.2f} it/s ({values.get('samples_per_s', 0):.0f} samples/s)")
    return " | ".join(parts)
