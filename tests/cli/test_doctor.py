"""glmtui doctor: real child interpreters for torch (a broken, hanging or crashing torch made
with a package shadowing it), NVML faked at the hardware edge, the hubs served on 127.0.0.1
(tests/hubserver.py) or a closed port, real folders for the history check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from collections import namedtuple
from pathlib import Path

import pytest

from glmtui import doctor
from glmtui.config import default_paths
from glmtui.doctor import QUANT_PROBE, TORCH_PROBE, DriverFacts, Request, run_probe
from helpers import FrozenSampler, free_port, host_only_snapshot, palette_first, screen_text, type_text, wait_for

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ the hardware edges


class NVMLError(Exception):
    pass


class FakeNVML(types.SimpleNamespace):
    """pynvml's names for what the doctor asks: driver, CUDA version, GPUs and their compute capability."""

    def __init__(self, gpus=(), init_error=None, cuda=12040):
        super().__init__(NVMLError=NVMLError, gpus=list(gpus), init_error=init_error, cuda=cuda, shutdowns=0)
        for name in ("LibraryNotFound", "DriverNotLoaded", "GpuNotFound"):
            setattr(self, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {}))

    def nvmlInit(self):
        if self.init_error:
            raise getattr(self, self.init_error)("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return self.cuda

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.gpus[h][0]

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self.gpus[h][1]


H100 = ("NVIDIA H100 80GB HBM3", (9, 0))
V100 = ("Tesla V100-SXM2-16GB", (7, 0))
T4 = ("Tesla T4", (7, 5))


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def fake_torch(tmp_path: Path, body: str) -> dict:
    """An environment whose ``import torch`` runs ``body`` (a package shadowing the real torch)."""
    package = tmp_path / "shadow" / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(body))
    return dict(os.environ, PYTHONPATH=f"{package.parent}{os.pathsep}{REPO}")


@pytest.fixture(scope="module")
def real_torch_probe():
    probe, problem = run_probe(TORCH_PROBE, timeout=120)
    assert problem is None, problem
    return probe


@pytest.fixture
def offline_hubs(monkeypatch):
    closed = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", closed)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed)
    return closed


# ------------------------------------------------------------------ torch in a child interpreter


@pytest.mark.slow
def test_the_real_torch_is_described(real_torch_probe):
    import importlib.metadata

    assert real_torch_probe["version"].split("+")[0] == importlib.metadata.version("torch").split("+")[0]
    check = doctor.check_torch(real_torch_probe, None, DriverFacts("no_gpu", "no driver"), Request())
    assert check.verdict == "ok" or real_torch_probe.get("cuda"), check
    assert real_torch_probe["version"] in check.detail


@pytest.mark.slow
def test_a_torch_that_cannot_be_imported_is_a_fail_verdict(tmp_path):
    env = fake_torch(tmp_path, 'raise ImportError("libcudart.so.12: cannot open shared object file")\n')
    probe, problem = run_probe(TORCH_PROBE, env=env, timeout=60)
    check = doctor.check_torch(probe, problem, DriverFacts("no_gpu", "x"), Request())
    assert check.verdict == "fail" and "libcudart.so.12" in check.detail and "reinstall" in check.fix
    # and the command says so in its lines and its exit code, without a traceback
    run = subprocess.run([sys.executable, "-m", "glmtui.cli", "doctor", "--device", "cpu"], capture_output=True,
                         text=True, timeout=180, env=dict(env, HF_ENDPOINT=closed_port_url(),
                                                          MODELSCOPE_ENDPOINT=closed_port_url()))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "torch cannot be imported: ImportError: libcudart.so.12" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr


def test_a_hanging_torch_is_a_verdict_within_the_time_limit(tmp_path):
    env = fake_torch(tmp_path, "import time\ntime.sleep(120)\n")
    started = time.monotonic()
    probe, problem = run_probe(TORCH_PROBE, env=env, timeout=1)
    assert time.monotonic() - started < 30
    assert probe is None and "no answer within 1 s" in problem
    assert doctor.check_torch(probe, problem, DriverFacts("no_gpu", "x"), Request()).verdict == "fail"


def test_a_crashing_torch_names_the_signal(tmp_path):
    env = fake_torch(tmp_path, "import os\nos.abort()\n")
    probe, problem = run_probe(TORCH_PROBE, env=env, timeout=60)
    assert probe is None and problem.startswith("killed by SIGABRT")


@pytest.mark.slow
def test_cpu_torch_next_to_a_gpu_warns_and_fails_when_cuda_is_asked_for(real_torch_probe):
    if real_torch_probe.get("cuda"):
        pytest.skip("this machine's torch is a CUDA build")
    driver = doctor.nvml_facts(FakeNVML([H100], cuda=12040))
    auto = doctor.check_torch(real_torch_probe, None, driver, Request())
    assert auto.verdict == "warn" and "CPU-only build while an NVIDIA GPU is present" in auto.detail
    assert "download.pytorch.org/whl/cu" in auto.fix and "CUDA 12.4" in auto.fix
    asked = doctor.check_torch(real_torch_probe, None, driver, Request(device="cuda"))
    assert asked.verdict == "fail" and "--device cuda asks for CUDA" in asked.detail


# What torch 2.11 + CUDA 13 reports on an H100 box (the probe's own output there), and a CUDA build
# whose driver is too old: the verdicts over them.
CUDA13_H100 = {"version": "2.11.0+cu130", "cuda": "13.0", "hip": None, "available": True, "count": 1,
               "capabilities": [[9, 0]]}
CUDA13_OLD_DRIVER = {"version": "2.11.0+cu130", "cuda": "13.0", "hip": None, "available": False,
                     "cuda_error": "CUDA initialization: The NVIDIA driver on your system is too old "
                                   "(found version 12040)."}


def test_cuda_torch_against_the_driver():
    new_driver = doctor.nvml_facts(FakeNVML([H100], cuda=13000))
    ok = doctor.check_torch(CUDA13_H100, None, new_driver, Request(device="cuda"))
    assert ok.verdict == "ok" and "CUDA 13.0, 1 GPU visible" in ok.detail
    out_of_range = doctor.check_torch(CUDA13_H100, None, new_driver, Request(device="cuda:1"))
    assert out_of_range.verdict == "fail" and "torch sees 1 GPU" in out_of_range.detail
    old_driver = doctor.nvml_facts(FakeNVML([H100], cuda=12040))
    old = doctor.check_torch(CUDA13_OLD_DRIVER, None, old_driver, Request(device="cuda"))
    assert old.verdict == "fail" and "too old" in old.detail
    assert "update the NVIDIA driver" in old.fix and "CUDA 12.4" in old.fix
    assert doctor.check_torch(CUDA13_OLD_DRIVER, None, old_driver, Request()).verdict == "warn"


# ------------------------------------------------------------------ driver and compute capability


def test_driver_facts_and_verdicts():
    nvml = FakeNVML([H100, V100], cuda=12040)
    facts = doctor.nvml_facts(nvml)
    assert facts.state == "ok" and facts.cuda_version == (12, 4) and nvml.shutdowns == 1
    assert [g.capability for g in facts.gpus] == [(9, 0), (7, 0)]
    check = doctor.check_driver(facts, Request())
    assert check.verdict == "ok" and "550.54.15 (CUDA 12.4)" in check.detail and "GPU1 Tesla V100" in check.detail

    missing = doctor.nvml_facts(FakeNVML(init_error="NVMLError_LibraryNotFound"))
    assert missing.state == "no_gpu"
    assert doctor.check_driver(missing, Request()).verdict == "warn"
    assert doctor.check_driver(missing, Request(device="cpu")).verdict == "ok"
    asked = doctor.check_driver(missing, Request(device="cuda:0"))
    assert asked.verdict == "fail" and "--device cuda:0 asks for one" in asked.detail and asked.fix
    assert doctor.check_driver(doctor.nvml_facts(None), Request()).fix == "pip install nvidia-ml-py"


def test_compute_capability_against_the_quantizers():
    old = doctor.check_capability(doctor.nvml_facts(FakeNVML([V100])), None, Request())
    assert old.verdict == "warn" and "int8 has no tensor-core path below 7.5" in old.detail
    assert "bf16 is not native below 8.0" in old.detail and "fp16" in old.fix
    t4 = doctor.check_capability(doctor.nvml_facts(FakeNVML([T4])), None, Request())
    assert t4.verdict == "warn" and "int8" not in t4.detail and "bf16" in t4.detail
    new = doctor.check_capability(doctor.nvml_facts(FakeNVML([H100])), None, Request())
    assert new.verdict == "ok" and "sm 9.0" in new.detail
    assert doctor.check_capability(DriverFacts("no_gpu", "x"), None, Request()).verdict == "ok"


@pytest.mark.slow
def test_bitsandbytes_and_torchao_as_installed(tmp_path):
    probe, problem = run_probe(QUANT_PROBE, timeout=120)
    assert problem is None
    checks = {c.key: c for c in doctor.check_quantizers(probe, None, Request(mode="int4"))}
    import importlib.metadata

    assert checks["bitsandbytes"].verdict == "ok"
    assert importlib.metadata.version("bitsandbytes") in checks["bitsandbytes"].detail
    assert checks["torchao"].verdict in ("ok", "warn")
    # bitsandbytes that cannot be imported (it imports torch): a fail only when int8/int4 is asked for
    broken, _ = run_probe(QUANT_PROBE, timeout=60, env=fake_torch(tmp_path, "raise OSError('libc10.so: bad ELF')\n"))
    asked = {c.key: c for c in doctor.check_quantizers(broken, None, Request(mode="int8"))}["bitsandbytes"]
    assert asked.verdict == "fail" and "libc10.so" in asked.detail and "--mode int8 needs it" in asked.detail
    assert {c.key: c for c in doctor.check_quantizers(broken, None, Request())}["bitsandbytes"].verdict == "warn"


# ------------------------------------------------------------------ transformers, disk


def test_transformers_against_the_catalogue(tmp_path):
    real = doctor.check_transformers(Request())
    assert real.verdict == "ok", real
    # a transformers without the GLM-4-0414 classes (models/glm4 missing)
    old = tmp_path / "transformers"
    (old / "models" / "glm").mkdir(parents=True)
    check = doctor.check_transformers(Request(), ("4.47.0", old))
    assert check.verdict == "warn" and "GLM-4-9B-0414 (Glm4ForCausalLM)" in check.detail
    assert "ChatGLM3-6B" not in check.detail
    assert doctor.check_transformers(Request(model="glm-4-9b-0414"), ("4.47.0", old)).verdict == "fail"
    assert doctor.check_transformers(Request(model="chatglm3-6b"), ("4.47.0", old)).verdict == "warn"
    # a local folder: its config.json's architecture
    folder = tmp_path / "my-glm4"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Glm4ForCausalLM"]}))
    local = doctor.check_transformers(Request(model=str(folder)), ("4.47.0", old))
    assert local.verdict == "fail" and "my-glm4 (Glm4ForCausalLM)" in local.detail


def test_disk_free_against_the_catalogue():
    paths = default_paths()
    real = doctor.check_disk(paths, Request())
    assert str(paths.models_dir) in real.detail and "GB free" in real.detail
    Usage = namedtuple("Usage", "total used free")
    small = lambda path: Usage(100 * 10**9, 90 * 10**9, 10 * 10**9)  # noqa: E731 - a 10 GB free disk
    some = doctor.check_disk(paths, Request(), disk_usage=small)
    assert some.verdict == "ok" and "not ChatGLM3-6B," in some.detail and "GLM-Edge-1.5B" not in some.detail
    tiny = lambda path: Usage(100 * 10**9, 98 * 10**9, 2 * 10**9)  # noqa: E731 - a 2 GB free disk
    none = doctor.check_disk(paths, Request(), disk_usage=tiny)
    assert none.verdict == "warn" and "the smallest, GLM-Edge-1.5B-Chat, needs 3.2 GB" in none.detail
    fail = doctor.check_disk(paths, Request(model="chatglm3-6b"), disk_usage=small)
    assert fail.verdict == "fail" and "ChatGLM3-6B needs 12.5 GB" in fail.detail and "GLMTUI_HOME" in fail.fix
    assert doctor.check_disk(paths, Request(model="glm-edge-1.5b-chat"), disk_usage=small).verdict == "ok"


# ------------------------------------------------------------------ hubs


def test_hubs_through_the_fake_hub_and_a_closed_port(monkeypatch):
    from hubserver import FakeHub

    closed = closed_port_url()
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed)
        hubs = doctor.hub_endpoints(default_paths().config_file)
        assert [(k, u) for k, _, u, _ in hubs] == [("hub_mirror", hub.url), ("hub_hf", doctor.HF_PUBLIC),
                                                  ("hub_modelscope", closed)]
        mirror = doctor.check_hub(*hubs[0], mirrored=True)
        assert mirror.verdict == "ok" and hub.url in mirror.detail and "HF_ENDPOINT" in mirror.detail
        assert any(r.path == "/" for r in hub.requests)
        started = time.monotonic()
        ms = doctor.check_hub(*hubs[2], mirrored=True, timeout=2)
        assert time.monotonic() - started < 10
        assert ms.verdict == "warn" and "connection refused" in ms.detail and "--source hf" in ms.fix


def test_a_mirror_in_config_toml_is_checked(monkeypatch):
    from hubserver import FakeHub

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    config = default_paths().config_file
    closed = closed_port_url()
    config.parent.mkdir(parents=True)
    with FakeHub() as hub:
        config.write_text(f'[hub]\nhf_endpoint = "{closed}"\nmodelscope_endpoint = "{hub.url}"\n')
        hubs = doctor.hub_endpoints(config)
        mirror = doctor.check_hub(*hubs[0], mirrored=True, timeout=2)
        assert mirror.verdict == "warn" and "connection refused" in mirror.detail
        assert "hf_endpoint under [hub]" in mirror.fix and str(config) in mirror.fix
        ms = doctor.check_hub(*hubs[2], mirrored=True)
        assert ms.verdict == "ok" and "modelscope_endpoint under [hub]" in ms.detail


# ------------------------------------------------------------------ history folder


def test_history_folder_writable_and_read_only_file():
    paths = default_paths()
    fresh = doctor.check_history(paths)
    assert fresh.verdict == "ok" and "created on first start" in fresh.detail
    paths.data_dir.mkdir(parents=True)
    assert doctor.check_history(paths).verdict == "ok"
    assert list(paths.data_dir.iterdir()) == []  # the probe file is gone
    paths.history_db.write_bytes(b"")
    os.chmod(paths.history_db, 0o400)
    ro = doctor.check_history(paths)
    assert ro.verdict == "fail" and "read-only (mode 0400)" in ro.detail and ro.fix == f"chmod u+w {paths.history_db}"


_AS_NOBODY = """
import os, sys
from glmtui.config import default_paths
from glmtui.doctor import check_history
paths = default_paths()
os.setgid(65534); os.setuid(65534)  # after the imports: the interpreter's own files are root's
c = check_history(paths)
print(c.verdict); print(c.detail)
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_history_folder_the_user_cannot_write_fails():
    home = Path(tempfile.mkdtemp(prefix="glmtui-doctor-ro-"))
    try:
        (home / "data").mkdir()
        if os.geteuid() == 0:  # root writes anywhere: run the check as a user who may not
            for p in (home, home / "data"):
                os.chown(p, 65534, 65534)
            os.chmod(home / "data", 0o500)
            os.chmod(home, 0o755)
            argv = [sys.executable, "-c", _AS_NOBODY]
        else:
            os.chmod(home / "data", 0o500)
            argv = [sys.executable, "-c", _AS_NOBODY.replace("os.setgid(65534); os.setuid(65534)", "")]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, GLMTUI_HOME=str(home), PYTHONPATH=str(REPO)))
        verdict, detail = run.stdout.splitlines()[:2]
        assert verdict == "fail", run.stdout + run.stderr
        assert "cannot write in" in detail and "Permission denied" in detail
    finally:
        os.chmod(home / "data", 0o700)
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------ the command


@pytest.mark.slow
def test_doctor_json_and_exit_code(real_torch_probe, offline_hubs):
    if real_torch_probe.get("cuda"):
        pytest.skip("this machine's torch is a CUDA build")
    run = subprocess.run([sys.executable, "-m", "glmtui.cli", "doctor", "--json", "--device", "cuda"],
                         capture_output=True, text=True, timeout=180)
    report = json.loads(run.stdout)
    by_key = {c["key"]: c for c in report["checks"]}
    assert run.returncode == 1 == report["exit_code"]
    assert by_key["torch"]["verdict"] == "fail" and by_key["torch"]["fix"]
    assert set(by_key) >= {"driver", "torch", "capability", "bitsandbytes", "torchao", "transformers", "disk",
                           "hub_mirror", "hub_hf", "hub_modelscope", "history"}
    assert all(c["verdict"] in ("ok", "warn", "fail") for c in report["checks"])
    assert by_key["hub_mirror"]["verdict"] == "warn" and "connection refused" in by_key["hub_mirror"]["detail"]
    # the same machine on the CPU: nothing asked for is broken
    run = subprocess.run([sys.executable, "-m", "glmtui.cli", "doctor", "--device", "cpu"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1].startswith(("everything", "0 failed"))
    assert any(line.startswith("ok    torch build") for line in run.stdout.splitlines())


# ------------------------------------------------------------------ the screen


@pytest.mark.slow
async def test_doctor_screen_from_the_palette(offline_hubs, monkeypatch):
    from glmtui.ui.app import GlmApp
    from glmtui.ui.doctor import DoctorScreen

    app = GlmApp(mode="fp32", device="cpu", sampler=FrozenSampler(host_only_snapshot()))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        await type_text(pilot, "doctor")
        await wait_for(pilot, lambda: "doctor" in palette_first(app).lower(), 10, "the palette to list the doctor")
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, DoctorScreen) and screen.request == Request(device="cpu", mode="fp32")
        assert screen.checks is None  # the checks run off the UI thread: the screen is up before them
        await wait_for(pilot, lambda: screen.checks is not None, 120, "the checks", interval=0.2)
        # the checks are set and the body updated in one call; the compositor draws them on a later frame
        await wait_for(pilot, lambda: "torch build" in screen_text(app), 10, "the checks on the screen", interval=0.1)
        body = screen_text(app)
        assert "torch build" in body and "history folder" in body and "fix:" in body
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, DoctorScreen)
