"""``glmtui fit``: figures per mode from the exact prediction, verdicts against free memory per GPU
(a fake NVML at the hardware edge) and RAM, config.json from a folder or the (fake) hub only."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import tiny_models
from fake_nvml import FakeNVML, GiB, gpu
from glmtui import cli, fit
from glmtui.engine import memory
from helpers import free_port
from hubserver import FakeHub

MiB = 2**20


@pytest.fixture(scope="module")
def flash_dir(tmp_path_factory):
    return tiny_models.build_glm4_moe_lite(tmp_path_factory.mktemp("fit") / "tiny-flash")


@pytest.fixture
def meta_builds(monkeypatch):
    """The meta-device builds (each one's config class) from here on; predict.meta_model still builds."""
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    builds = []
    real = predict.meta_model

    def counting(config, *args, **kwargs):
        builds.append(type(config).__name__)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(predict, "meta_model", counting)
    return builds


def _run(argv, nvml, capsys):
    code = fit.fit_command(cli.build_parser().parse_args(["fit", *argv]), nvml=nvml)
    out, err = capsys.readouterr()
    return code, out, err


def _two_gpus():
    # GPU 0: 2 GiB free, enough for the tiny model + a CUDA context; GPU 1: 100 MiB free, not enough
    return FakeNVML([gpu(total=24 * GiB, used_v1=22 * GiB, used_v2=22 * GiB),
                     gpu(name="NVIDIA A100", total=80 * GiB, used_v1=80 * GiB - 100 * MiB, used_v2=79 * GiB)])


def test_fit_local_folder_json(flash_dir, capsys):
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    code, out, err = _run([str(flash_dir), "--json", "--context", "512"], _two_gpus(), capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["exact"] and data["config"] == str(flash_dir)
    assert [g["free"] for g in data["machine"]["gpus"]] == [2 * GiB, 100 * MiB]
    exact_gpu = predict.predict_dir(flash_dir, device="cuda", context_len=512)
    exact_cpu = predict.predict_dir(flash_dir, device="cpu", context_len=512)
    for mode in memory.MODES:
        row = data["modes"][mode]
        assert row["gpu"]["weights"] == exact_gpu[mode].weight_bytes and row["gpu"]["source"] == "meta"
        # MLA latent: (32 + 16) x 3 layers x 2 bytes per token (4 in fp32)
        assert row["gpu"]["kv_cache"] == 288 * (2 if mode == "fp32" else 1) * 512
        assert row["cpu"]["weights"] == exact_cpu[mode].weight_bytes
        g = row["gpu"]
        assert g["total"] == g["weights"] + g["kv_cache"] + g["overhead"]
        assert row["gpu_verdicts"]["0"]["verdict"] == "fits"
        assert row["gpu_verdicts"]["1"]["verdict"] == "won't fit"
        assert row["all_gpus"]["verdict"] in ("fits", "tight")
        assert row["cpu_verdict"]["verdict"] in ("CPU only", "won't fit")


def test_fit_builds_the_meta_model_once(flash_dir, meta_builds, capsys):
    """Every mode on the GPU and on the CPU comes from one meta-device build (a build per dtype and
    device was most of a cold answer's counting time); a second ask is answered from the store."""
    builds = meta_builds
    code, out, err = _run([str(flash_dir), "--json", "--context", "256"], _two_gpus(), capsys)
    assert code == 0, err
    assert len(builds) == 1
    data = json.loads(out)
    assert all(data["modes"][m]["gpu"] and data["modes"][m]["cpu"] for m in memory.MODES)
    code, out, err = _run([str(flash_dir), "--json", "--context", "256"], _two_gpus(), capsys)
    assert code == 0 and len(builds) == 1


def test_fit_another_context_after_a_count_is_answered_from_the_stored_count(flash_dir, meta_builds, capsys):
    """The count is stored whatever the context: `glmtui fit M --context N` after any earlier count of M
    builds nothing, and its figures are a fresh exact count's at N."""
    from glmtui.engine import predict

    builds = meta_builds
    code, out, err = _run([str(flash_dir), "--json"], _two_gpus(), capsys)
    assert code == 0 and len(builds) == 1, err
    for context in ("4096", "17", "100000"):
        before = len(builds)
        code, out, err = _run([str(flash_dir), "--json", "--context", context], _two_gpus(), capsys)
        assert code == 0 and len(builds) == before, err  # no meta build: the stored count
        cfg = memory.read_config(flash_dir)
        fresh = {dev: predict.exact_results(cfg, (dev,), int(context), use_cache=False)[dev].predictions
                 for dev in ("cuda", "cpu")}
        modes = json.loads(out)["modes"]
        for mode in memory.MODES:
            for side, dev in (("gpu", "cuda"), ("cpu", "cpu")):
                p, row = fresh[dev][mode], modes[mode][side]
                assert (row["weights"], row["kv_cache"], row["overhead"], row["total"], row["context"]) == (
                    p.weight_bytes, p.kv_cache_bytes, p.overhead_bytes, p.total_bytes, p.context_len)


def test_fit_text_and_no_gpu(flash_dir, capsys):
    pytest.importorskip("transformers")
    code, out, err = _run([str(flash_dir)], _two_gpus(), capsys)
    assert code == 0, err
    assert "GPU 0: fits" in out and "GPU 1: won't fit" in out and "all GPUs:" in out
    assert "free now: GPU 0 NVIDIA GeForce RTX 4090: 2.00 GiB free" in out
    assert "experts" in out  # the note that bitsandbytes leaves 3-D expert tensors in 16-bit
    no_gpu = FakeNVML([], init_error=None)
    code, out, err = _run([str(flash_dir)], no_gpu, capsys)
    assert code == 0 and "on the GPU" not in out and "on the CPU" in out


def test_fit_unknown_architecture_says_so(tmp_path, capsys):
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama3000", "hidden_size": 64}))
    code, out, err = _run([str(tmp_path)], FakeNVML([gpu()]), capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "unknown architecture 'llama3000'" in err and "no prediction" in err


@pytest.mark.slow
def test_fit_cached_answer_imports_no_torch(flash_dir, tmp_path):
    """The second ask for a config is answered from the stored result: no torch import (< 2 s)."""
    pytest.importorskip("transformers")
    env_home = {"GLMTUI_HOME": str(tmp_path)}
    import os

    env = {**os.environ, **env_home}
    first = subprocess.run([sys.executable, "-m", "glmtui.cli", "fit", str(flash_dir), "--json"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    code = ("import sys, time; t = time.perf_counter(); from glmtui.cli import main; rc = main(['fit', sys.argv[1], "
            "'--json']); print('SECONDS', time.perf_counter() - t, file=sys.stderr); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; sys.exit(rc)")
    second = subprocess.run([sys.executable, "-c", code, str(flash_dir)], capture_output=True, text=True, env=env,
                            timeout=120)
    assert second.returncode == 0, second.stderr
    a, b = json.loads(first.stdout)["modes"], json.loads(second.stdout)["modes"]
    assert {m: a[m]["cpu"] for m in a} == {m: b[m]["cpu"] for m in b}  # the same figures (free RAM moves)


@pytest.mark.slow
def test_fit_at_another_context_after_the_predictors_count_imports_no_torch(flash_dir, tmp_path):
    """What the Models pane or `glmtui pull` counted (the predictor subprocess, at the model's own context)
    answers `glmtui fit --context N` in a fresh interpreter without importing torch."""
    pytest.importorskip("transformers")
    import os

    from glmtui.engine import predict

    env = {**os.environ, "GLMTUI_HOME": str(tmp_path)}
    counted = subprocess.run([sys.executable, "-m", "glmtui.engine.predict", str(flash_dir), "--device", "cpu",
                              "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert counted.returncode == 0, counted.stderr
    code = ("import sys; from glmtui.cli import main; rc = main(['fit', sys.argv[1], '--json', '--context', '3000']); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(flash_dir)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    fresh = predict.exact_results(memory.read_config(flash_dir), ("cpu",), 3000, use_cache=False)["cpu"]
    modes = json.loads(done.stdout)["modes"]
    for mode in memory.MODES:
        p = fresh.predictions[mode]
        assert (modes[mode]["cpu"]["weights"], modes[mode]["cpu"]["kv_cache"], modes[mode]["cpu"]["total"]) == (
            p.weight_bytes, p.kv_cache_bytes, p.total_bytes)


def test_fit_hub_id_fetches_only_config(flash_dir, monkeypatch, capsys):
    pytest.importorskip("transformers")
    with FakeHub() as hub:
        hub.add_folder("someone/tiny-flash", flash_dir)
        hub.add_repo("someone/no-config", {"README.md": b"hi"})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
        code, out, err = _run(["someone/tiny-flash", "--json"], FakeNVML([gpu()]), capsys)
        assert code == 0, err
        data = json.loads(out)
        assert data["config"].startswith(hub.url) and data["modes"]["bf16"]["gpu"]["kv_bytes_per_token"] == 288
        assert {r.file for r in hub.requests} == {"config.json"}  # nothing else was fetched
        hub.clear_log()
        code, out, err = _run(["someone/tiny-flash", "--source", "modelscope", "--json"], FakeNVML([gpu()]), capsys)
        assert code == 0, err
        assert {r.file for r in hub.requests} == {"config.json"}

        started = time.monotonic()
        code, out, err = _run(["nobody/does-not-exist"], FakeNVML([gpu()]), capsys)
        assert code == 1 and out == "" and err.count("\n") == 1
        assert "no model nobody/does-not-exist on Hugging Face" in err
        code, out, err = _run(["nobody/does-not-exist", "--source", "modelscope"], FakeNVML([gpu()]), capsys)
        assert code == 1 and "no model nobody/does-not-exist on ModelScope" in err
        code, out, err = _run(["someone/no-config"], FakeNVML([gpu()]), capsys)
        assert code == 1 and "has no config.json" in err
        assert time.monotonic() - started < 10


def test_fit_no_network_one_line_fast(monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    code, out, err = _run(["nobody/some-model"], FakeNVML([gpu()]), capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "cannot reach http://127.0.0.1" in err and "connection refused" in err and "HF_ENDPOINT" in err
    assert time.monotonic() - started < 5
    code, out, err = _run(["nobody/some-model", "--endpoint", "not a url"], FakeNVML([gpu()]), capsys)
    assert code == 1 and "not an http(s) URL" in err


def test_fit_bad_input_lines(tmp_path, capsys):
    code, out, err = _run([str(tmp_path / "missing")], FakeNVML([gpu()]), capsys)
    assert code == 1 and "no such model folder" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, out, err = _run([str(tmp_path / "empty")], FakeNVML([gpu()]), capsys)
    assert code == 1 and "has no config.json" in err
    code, out, err = _run([str(tmp_path / "empty"), "--context", "0"], FakeNVML([gpu()]), capsys)
    assert code == 1 and "--context" in err


def test_fit_catalogue_key_and_old_org_id_fetch_the_zai_org_config(tmp_path, monkeypatch, capsys):
    """A catalogue model not downloaded: its config.json from the hub, under the zai-org id, also when
    the user typed the old THUDM id."""
    pytest.importorskip("transformers")
    folder = tiny_models.build_glm4_thinking(tmp_path / "z1")
    with FakeHub() as hub:
        hub.add_folder("zai-org/GLM-Z1-9B-0414", folder)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        for spec in ("glm-z1-9b-0414", "THUDM/GLM-Z1-9B-0414"):
            code, out, err = _run([spec, "--json"], FakeNVML([gpu()]), capsys)
            assert code == 0, err
            data = json.loads(out)
            assert data["model"] == "GLM-Z1-9B-0414" and "/zai-org/GLM-Z1-9B-0414/" in data["config"]
            assert data["modes"]["bf16"]["gpu"]["params"] == json.loads(out)["modes"]["int4"]["gpu"]["params"]
