"""glmtui doctor's bitsandbytes / torchao verdicts follow the backend the engine would pick for the mode and
device asked for (glmtui.engine.quant_backends.choose): the GPUs as NVML would describe them, the packages as
the doctor's child interpreter reports them."""

from __future__ import annotations

import pytest

from glmtui.doctor import DriverFacts, GpuFacts, Request, check_quantizers
from glmtui.doctor.quant import load_target

H100 = DriverFacts("ok", gpus=(GpuFacts(0, "NVIDIA H100 80GB HBM3", (9, 0)),), cuda_version=(12, 4))
V100 = DriverFacts("ok", gpus=(GpuFacts(0, "Tesla V100-SXM2-16GB", (7, 0)),), cuda_version=(12, 4))
CUDA_TORCH = {"version": "2.13.0", "cuda": "12.4", "available": True, "count": 1, "capabilities": [[9, 0]]}
CPU_TORCH = {"version": "2.13.0+cpu", "cuda": None, "available": False, "count": 0}
BNB = {"installed": True, "version": "0.50.2"}
NO = {"installed": False}
TAO = {"installed": True, "version": "0.15.0"}
BROKEN_TAO = {"installed": True, "version": "0.15.0", "error": "ImportError: undefined symbol: _ZN3c10"}


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("GLMTUI_QUANT_BACKEND", raising=False)


def _checks(probe, request, driver=H100, torch=CUDA_TORCH):
    return {c.key: c for c in check_quantizers(probe, None, request, driver, torch)}


def test_torchao_runs_both_modes_on_an_ampere_or_newer_gpu_so_bitsandbytes_is_not_needed():
    checks = _checks({"bitsandbytes": NO, "torchao": TAO}, Request(device="cuda", mode="int4"))
    assert checks["bitsandbytes"].verdict == "ok" and "not needed on this GPU" in checks["bitsandbytes"].detail
    assert checks["torchao"].verdict == "ok" and "runs int8, int4 on this GPU" in checks["torchao"].detail


def test_without_torchao_the_gpu_needs_bitsandbytes():
    checks = _checks({"bitsandbytes": NO, "torchao": NO}, Request(device="cuda", mode="int4"))
    assert checks["bitsandbytes"].verdict == "fail"
    assert "--mode int4 needs it on this GPU" in checks["bitsandbytes"].detail
    assert checks["torchao"].verdict == "warn" and "slower" in checks["torchao"].detail and checks["torchao"].fix
    fine = _checks({"bitsandbytes": BNB, "torchao": NO}, Request(device="cuda", mode="int4"))
    assert fine["bitsandbytes"].verdict == "ok" and "runs int8, int4 on this GPU" in fine["bitsandbytes"].detail


def test_an_older_gpu_runs_int4_through_bitsandbytes_even_with_torchao():
    int4 = _checks({"bitsandbytes": NO, "torchao": TAO}, Request(device="cuda", mode="int4"), driver=V100)
    assert int4["bitsandbytes"].verdict == "fail" and "--mode int4 needs it" in int4["bitsandbytes"].detail
    int8 = _checks({"bitsandbytes": NO, "torchao": TAO}, Request(device="cuda", mode="int8"), driver=V100)
    assert int8["bitsandbytes"].verdict == "warn" and "int4 unavailable on this GPU" in int8["bitsandbytes"].detail
    assert int8["torchao"].verdict == "ok" and "runs int8 on this GPU" in int8["torchao"].detail


def test_a_broken_torchao_fails_the_modes_it_would_run():
    checks = _checks({"bitsandbytes": BNB, "torchao": BROKEN_TAO}, Request(device="cuda:0", mode="int8"))
    assert checks["torchao"].verdict == "fail" and "undefined symbol" in checks["torchao"].detail
    assert "GLMTUI_QUANT_BACKEND=bitsandbytes" in checks["torchao"].fix
    on_cpu = _checks({"bitsandbytes": BNB, "torchao": BROKEN_TAO}, Request(device="cpu", mode="int8"))
    assert on_cpu["torchao"].verdict == "ok" and "not used on the CPU" in on_cpu["torchao"].detail


def test_the_cpu_always_uses_bitsandbytes(monkeypatch):
    checks = _checks({"bitsandbytes": NO, "torchao": TAO}, Request(device="auto", mode="int4"), torch=CPU_TORCH)
    bnb = checks["bitsandbytes"]
    assert bnb.verdict == "fail" and "--mode int4 needs it on the CPU" in bnb.detail
    unasked = _checks({"bitsandbytes": NO, "torchao": NO}, Request(device="cpu"))
    assert unasked["bitsandbytes"].verdict == "warn" and unasked["torchao"].verdict == "ok"
    monkeypatch.setenv("GLMTUI_QUANT_BACKEND", "bitsandbytes")  # the override is what a load would use
    forced = _checks({"bitsandbytes": NO, "torchao": TAO}, Request(device="cuda", mode="int4"))
    assert forced["bitsandbytes"].verdict == "fail"


def test_where_a_load_would_run():
    assert load_target(Request(device="cpu"), H100, CUDA_TORCH) == ("cpu", None)
    assert load_target(Request(device="auto"), H100, CPU_TORCH) == ("cpu", None)  # torch cannot use the GPU
    assert load_target(Request(device="auto"), H100, CUDA_TORCH) == ("cuda", (9, 0))
    assert load_target(Request(device="cuda:1"), DriverFacts("no_gpu"), {"available": True,
                                                                          "capabilities": [[8, 0], [7, 5]]}) == \
        ("cuda", (7, 5))
