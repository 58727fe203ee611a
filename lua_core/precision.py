"""The dtype ``dtype=auto`` picks on a CPU, and the reason given for it (issue #20).

Why a module of its own: the choice is a measured trade-off that the ComfyUI loader (and anyone
else loading a model) should make the same way, and it rests on what torch reports about the CPU,
which tests must be able to mock both ways.

On a CPU with bf16 matrix units (Intel AMX: Sapphire Rapids and later) bf16 GEMMs run ~6x faster
than fp32 ones, and every family's bf16 forward is faster than its fp32 one
(``benchmarks/cpu_bf16.py``; docs/measurements/cpu-2026-12-02-bf16-amx.log: LUA x2/x4 at 32^2 and
64^2 in 0.32-0.43x of its fp32 time, city96, NNLatentUpscale, LSSGen and SesquiLSR in 0.40-0.62x), at
a drift the tests bound (LUA: conformance outputs within 0.10 of the fp32 ones, mean 0.0145; peers: per
family, 1.8-3.9% of the output's largest value, tests/test_peers.py). Without them, bf16 has no fast GEMM
and is emulated: a bf16 forward of the released LUA took minutes on such a CPU, so fp32 stays the choice
there. AVX-512 BF16 without AMX (Cooper Lake, Zen 4) is not counted: nothing was measured on one.
"""

from __future__ import annotations

import torch

#: the reasons logged with the dtype (the node's log line says which dtype ran and why)
WITH_UNITS = ("auto: this CPU has bf16 matrix units (torch reports AMX tiles), where a bf16 forward takes "
              "0.3-0.6x of the fp32 time (LUA 0.32-0.43x)")
WITHOUT_UNITS = "auto: fp32, as this CPU has no bf16 matrix units (torch reports no AMX tiles)"


def cpu_has_bf16_matrix_units() -> bool:
    """Whether torch reports native bf16 matrix units on this CPU (AMX tiles, which come with
    AMX-BF16 on every CPU that has them), not guessed from the CPU's model name. False when this
    torch build cannot tell."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is None:
        return False
    try:
        return bool(probe())
    except (RuntimeError, OSError):
        return False


def cpu_auto_dtype() -> tuple[torch.dtype, str]:
    """(dtype, why) for ``dtype=auto`` on the CPU: bf16 with bf16 matrix units, else fp32."""
    if cpu_has_bf16_matrix_units():
        return torch.bfloat16, WITH_UNITS
    return torch.float32, WITHOUT_UNITS
