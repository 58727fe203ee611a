"""``dtype=auto`` on a CPU (issue #20): bf16 where torch reports bf16 matrix units, fp32 elsewhere.

The detection is mocked both ways, so the rule is tested whatever CPU runs the tests (the CI machines
have no AMX; the development hosts do).
"""

from __future__ import annotations

import pytest
import torch

from lua_core import precision


@pytest.mark.parametrize("units", [True, False])
def test_auto_follows_what_torch_reports(monkeypatch, units):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: units)
    dtype, why = precision.cpu_auto_dtype()
    assert dtype == (torch.bfloat16 if units else torch.float32)
    assert why == (precision.WITH_UNITS if units else precision.WITHOUT_UNITS)
    assert ("has bf16 matrix units" if units else "no bf16 matrix units") in why


def test_a_torch_that_cannot_tell_means_fp32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert precision.cpu_auto_dtype()[0] == torch.float32

    def broken() -> bool:
        raise RuntimeError("cpuinfo failed")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert precision.cpu_auto_dtype()[0] == torch.float32

