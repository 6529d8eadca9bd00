"""glmtui.monitor: a fake NVML at the hardware edge; the host path for real."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import types

import pytest

from fake_nvml import FakeNVML, GiB, MiB, gpu
from glmtui import monitor
from glmtui.monitor import MIN_INTERVAL, NVML_HINT, Sampler

# ----------------------------------------------------------------------------- NVML paths


def test_two_gpus_v2_memory_and_metrics():
    fake = FakeNVML([gpu(), gpu(name="NVIDIA A100", total=80 * GiB, used_v1=10 * GiB, used_v2=9 * GiB, util=90)])
    snap = Sampler(nvml=fake).sample()
    assert snap.nvml_state == "ok" and snap.has_gpu and snap.message is None
    assert snap.driver_version == "550.54.15"
    g0, g1 = snap.gpus
    assert (g0.index, g0.state, g0.name) == (0, "ok", "NVIDIA GeForce RTX 4090")
    assert g0.memory_api == "v2"
    assert g0.memory_used == 2 * GiB  # v2 "used", not v1's 3 GiB
    assert g0.memory_reserved == 1 * GiB
    assert g0.memory_total == 24 * GiB and g0.memory_free == 21 * GiB
    assert g0.memory_fraction == pytest.approx(2 / 24)
    assert (g0.utilization_gpu, g0.utilization_memory, g0.temperature_c) == (37, 18, 55)
    assert g0.power_w == pytest.approx(123.456) and g0.power_limit_w == pytest.approx(450.0)
    assert g0.processes == () and g0.errors == ()
    assert (g1.name, g1.memory_used, g1.utilization_gpu) == ("NVIDIA A100", 9 * GiB, 90)


def test_v1_fallback_when_v2_unsupported():
    fake = FakeNVML([gpu()], v2=False)
    s = Sampler(nvml=fake)
    for _ in range(3):
        g = s.sample().gpus[0]
        assert g.memory_api == "v1" and g.memory_used == 3 * GiB and g.memory_reserved is None
    assert fake.calls["mem_v2"] == 1  # learnt once, not retried every tick
    assert fake.calls["mem_v1"] == 3


def test_handles_acquired_once_and_init_once():
    fake = FakeNVML([gpu(), gpu()])
    s = Sampler(nvml=fake)
    for _ in range(50):
        s.sample()
    assert fake.calls["init"] == 1
    assert fake.calls["handle"] == 2  # one per GPU, ever
    # the processes API version is probed once too
    assert fake.calls["compute_v3"] == 100 and fake.calls["compute_v2"] == 0
    s.close()
    assert fake.calls["shutdown"] == 1


def test_not_supported_metrics_are_none():
    ns = "NVMLError_NotSupported"
    fake = FakeNVML([gpu()])
    g = fake.gpus[0]
    for k in ("util", "temp", "power_mw", "limit_mw", "compute", "graphics"):
        g[k] = getattr(fake, ns)
    snap = Sampler(nvml=fake).sample()
    row = snap.gpus[0]
    assert row.state == "ok" and row.memory_used == 2 * GiB and row.name
    assert row.utilization_gpu is None and row.utilization_memory is None
    assert row.temperature_c is None and row.power_w is None and row.power_limit_w is None
    assert row.processes is None
    assert row.errors == ()  # NotSupported is "n/a", not an error


def test_other_metric_error_is_none_and_reported():
    fake = FakeNVML([gpu()])
    fake.gpus[0]["temp"] = fake.NVMLError_Unknown
    fake.gpus[0]["compute"] = fake.NVMLError_NoPermission
    row = Sampler(nvml=fake).sample().gpus[0]
    assert row.state == "ok" and row.temperature_c is None and row.utilization_gpu == 37
    assert any(e.startswith("temperature") for e in row.errors)
    assert row.processes == ()  # graphics list still came back


def test_gpu_lost_marks_row_others_sampled():
    fake = FakeNVML([gpu(), gpu(util=5)])
    s = Sampler(nvml=fake)
    s.sample()
    fake.gpus[0]["lost"] = True
    snap = s.sample()
    assert snap.nvml_state == "ok"
    assert snap.gpus[0].state == "lost" and snap.gpus[0].memory_used is None
    assert snap.gpus[1].state == "ok" and snap.gpus[1].utilization_gpu == 5
    hist = snap.history.gpu(0)
    assert hist.memory_used == (2 * GiB, None)  # aligned: None for the lost tick


@pytest.mark.parametrize("err", ["NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"])
def test_no_driver_is_no_gpu_state(err):
    fake = FakeNVML([gpu()])
    fake.init_error = getattr(fake, err)
    s = Sampler(nvml=fake)
    snap = s.sample()
    assert snap.nvml_state == "no_gpu" and not snap.has_gpu and snap.gpus == ()
    assert "no NVIDIA GPU" in snap.message
    assert snap.host.ram_total and snap.host.process_rss  # host view still there
    s.sample()
    assert fake.calls["init"] == 1


def test_zero_devices_is_no_gpu():
    snap = Sampler(nvml=FakeNVML([])).sample()
    assert snap.nvml_state == "no_gpu" and snap.gpus == ()


def test_other_init_error_is_error_state():
    fake = FakeNVML([gpu()])
    fake.init_error = fake.NVMLError_NoPermission
    snap = Sampler(nvml=fake).sample()
    assert snap.nvml_state == "error" and "NVML init failed" in snap.message


def test_library_missing_gives_hint(monkeypatch):
    snap = Sampler(nvml=None).sample()
    assert snap.nvml_state == "no_library" and snap.message == NVML_HINT
    assert "nvidia-ml-py" in snap.message and "\n" not in snap.message
    # the default path, with the module unimportable
    monkeypatch.setitem(sys.modules, "pynvml", None)
    snap = Sampler().sample()
    assert snap.nvml_state == "no_library" and snap.message == NVML_HINT
    assert snap.host.ram_total > 0


def test_this_process_marked():
    me = os.getpid()
    fake = FakeNVML([gpu(compute=[(me, 1500 * MiB), (4242, 800 * MiB)], graphics=[(4242, 900 * MiB), (77, None)])])
    row = Sampler(nvml=fake).sample().gpus[0]
    by_pid = {p.pid: p for p in row.processes}
    assert by_pid[me].is_self and by_pid[me].kind == "compute" and by_pid[me].used_bytes == 1500 * MiB
    assert not by_pid[4242].is_self and by_pid[4242].kind == "compute+graphics"
    assert by_pid[4242].used_bytes == 900 * MiB
    assert by_pid[77].used_bytes is None and by_pid[77].name == "proc77"
    assert row.self_used_bytes == 1500 * MiB
    assert [p.pid for p in row.processes][0] == me  # largest first
    # inside a container NVML reports host PIDs: nothing matches, nothing marked
    row = Sampler(nvml=fake, pid=999_999).sample().gpus[0]
    assert not any(p.is_self for p in row.processes) and row.self_used_bytes is None


def test_compute_processes_fall_back_to_v2():
    fake = FakeNVML([gpu(no_v3=True, compute=[(11, MiB)])])
    s = Sampler(nvml=fake)
    for _ in range(3):
        assert [p.pid for p in s.sample().gpus[0].processes] == [11]
    assert fake.calls["compute_v3"] == 1 and fake.calls["compute_v2"] == 3


def test_history_ring_buffer():
    t = iter(range(1000))
    fake = FakeNVML([gpu(), gpu()])
    s = Sampler(nvml=fake, history_len=5, clock=lambda: float(next(t)))
    for i in range(8):
        fake.gpus[1]["util"] = i
        fake.gpus[0]["used_v2"] = i * MiB
        snap = s.sample()
    h = snap.history
    assert h.timestamps == (3.0, 4.0, 5.0, 6.0, 7.0)
    assert h.gpu(1).utilization == (3, 4, 5, 6, 7)
    assert h.gpu(0).memory_used == tuple(i * MiB for i in range(3, 8))
    assert len(h.ram_used) == len(h.process_rss) == 5
    assert all(v and v > 0 for v in h.process_rss)
    assert s.history() == h
    assert Sampler(nvml=None).history_len == monitor.HISTORY_LEN == 120


def test_interval_clamp():
    assert Sampler(nvml=None).interval == 1.0
    assert Sampler(0.05, nvml=None).interval == MIN_INTERVAL == 0.25
    assert Sampler(-3, nvml=None).interval == 0.25
    assert Sampler(float("nan"), nvml=None).interval == 1.0
    s = Sampler(2.5, nvml=None)
    assert s.interval == 2.5
    s.interval = 0.1
    assert s.interval == 0.25


def test_run_loop_stops():
    s = Sampler(0.25, nvml=None)
    got, stop = [], threading.Event()

    def on(snap):
        got.append(snap)
        if len(got) == 2:
            stop.set()

    th = threading.Thread(target=s.run, args=(on, stop))
    th.start()
    th.join(5)
    assert not th.is_alive() and len(got) == 2


def test_torch_figures_only_when_already_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert Sampler(nvml=None).sample().torch is None
    assert "torch" not in sys.modules  # the monitor never imports it

    cuda = types.SimpleNamespace(
        is_initialized=lambda: True,
        device_count=lambda: 1,
        memory_allocated=lambda i: 100,
        memory_reserved=lambda i: 200,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    (t,) = Sampler(nvml=None).sample().torch
    assert (t.device, t.allocated, t.reserved) == (0, 100, 200)
    cuda.is_initialized = lambda: False
    assert Sampler(nvml=None).sample().torch is None


def test_import_does_not_pull_torch():
    code = "import sys, glmtui.monitor; assert 'torch' not in sys.modules and 'pynvml' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- real host / real pynvml


@pytest.mark.slow
def test_host_rss_rises_with_allocation():
    s = Sampler(nvml=None)
    before = s.sample().host
    assert before.error is None
    assert before.ram_total > 0 and 0 < before.ram_available <= before.ram_total
    size = 200 * MiB
    blob = bytearray(b"\x01") * size  # written, so resident
    after = s.sample().host
    rise = after.process_rss - before.process_rss
    assert 0.8 * size < rise < 1.3 * size, rise / MiB
    del blob
    gc.collect()


def test_real_pynvml_never_raises():
    pytest.importorskip("pynvml")
    s = Sampler()
    for _ in range(2):
        snap = s.sample()
    assert snap.nvml_state in {"ok", "no_gpu", "error"}
    if snap.nvml_state == "ok":  # a machine with a driver
        assert snap.gpus and all(g.state in {"ok", "lost"} for g in snap.gpus)
    else:  # this dev box: no driver
        assert snap.gpus == () and snap.message and "no NVIDIA GPU" in snap.message
    assert snap.host.ram_total > 0
    s.close()
