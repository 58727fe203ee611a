"""Training on several processes: PyTorch's own distributed engine, set up from torchrun's environment.

``torchrun --nproc_per_node N [--nnodes M ...] -m lua_core train ...`` starts N copies of the
command per machine and gives each RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
``process_group`` joins that group (NCCL on CUDA, gloo on the CPU) and gives each rank its GPU
(``cuda:LOCAL_RANK``). The helpers below are all the training code asks of the group; without
one (a plain ``python -m lua_core train``) they do the one-process thing, so the code has a single
path and a one-process run is unchanged.

No process is started or watched here: torchrun does that (and stops every rank when one fails).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


def launched() -> bool:
    """True when torchrun (or another launcher setting its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, logs, manifests and the exported file."""
    return rank() == 0


def setup(device: str) -> str:
    """Join torchrun's process group (when launched by it); returns the device this rank uses.

    ``--device cuda`` means each rank's own GPU, ``cuda:LOCAL_RANK``: a fixed index would put
    every rank of a machine on one GPU.
    """
    if not launched() or active():
        return device
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None and int(os.environ["WORLD_SIZE"]) > 1:
            raise ValueError(f"under torchrun give --device cuda, not {device}: each rank uses cuda:LOCAL_RANK "
                             "(limit the GPUs with CUDA_VISIBLE_DEVICES)")
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    elif dev.type == "cpu":
        dist.init_process_group("gloo")
    else:
        raise ValueError(f"distributed training runs on cuda (NCCL) or cpu (gloo), not {device}")
    return str(dev)


def teardown() -> None:
    if active():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str) -> Iterator[str]:
    """``with process_group(args.device) as device:`` the command's body, on this rank's device."""
    joined = launched() and not active()
    dev = setup(device)
    try:
        yield dev
        if joined:
            # leave together: a rank that tore gloo down while rank 0 was still writing the final file
            # aborted once at exit ("terminate called without an active exception", exit -6, CI run of
            # 2026-12-02) though its work was done; after an error no barrier (the others may never come)
            barrier()
    finally:
        if joined:
            teardown()


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read next)."""
    if active():
        dist.barrier()


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank: decisions made from the file system (is a stage done,
    which checkpoint to resume) are made once, so no rank can see the folder differently."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each value averaged over the ranks (the logged losses of the global batch); one all-reduce."""
    if not active() or not values:
        return values
    keys = sorted(values)
    flat = torch.stack([torch.as_tensor(values[k], dtype=torch.float32).reshape(()) for k in keys])
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    dist.all_reduce(flat)
    flat = (flat / world_size()).cpu()
    return dict(zip(keys, flat.unbind()))


def wrap(module: nn.Module, device: torch.device, *, find_unused: bool) -> nn.Module:
    """``module`` in DistributedDataParallel when there is a group, else itself.

    ``find_unused`` is needed when a step may leave parameters without a gradient (the random-head
    phase trains one head; the other head's parameters get none, on every rank, as the head is a
    function of the step). Buffers are not broadcast each step: LUA's are derived constants.
    """
    if not active():
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.13 renames broadcast_buffers (and warns on the old name)
    new = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers" if new else "broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused, **no_sync)
