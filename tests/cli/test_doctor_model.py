"""`glmtui doctor --model`: the model asked for is on disk, or a hub that answers has it; otherwise a fail
verdict and exit status 1. Hubs: the fake hub on 127.0.0.1 or a closed port; real model folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from glmtui.config import default_paths
from glmtui.doctor import Request, check_hub, check_model
from helpers import free_port


def _closed() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def _hubs(hf: str, modelscope: str, mirror: str = "") -> list:
    """Real hub checks against these URLs (keys and titles as hub_endpoints gives them)."""
    rows = ([("hub_mirror", "Hugging Face mirror", mirror, "HF_ENDPOINT")] if mirror else []) + [
        ("hub_hf", "Hugging Face", hf, "the public hub"), ("hub_modelscope", "ModelScope", modelscope, "")]
    return [check_hub(key, title, url, where, bool(mirror), timeout=2) for key, title, url, where in rows]


def test_without_model_no_check():
    assert check_model(Request(), default_paths(), []) is None


def test_a_model_not_here_needs_a_hub_that_answers():
    from hubserver import FakeHub

    paths = default_paths()
    with FakeHub() as hub:
        reachable_ms = check_model(Request(model="chatglm3-6b"), paths, _hubs(_closed(), hub.url))
        assert reachable_ms.verdict == "ok" and "ModelScope answers" in reachable_ms.detail
        assert reachable_ms.fix == "glmtui pull chatglm3-6b --source modelscope"
        # Hugging Face through a mirror that answers: the public hub being out of reach does not matter
        mirrored = check_model(Request(model="chatglm3-6b"), paths, _hubs(_closed(), _closed(), mirror=hub.url))
        assert mirrored.verdict == "ok" and mirrored.fix == "glmtui pull chatglm3-6b --source hf"
    offline = check_model(Request(model="chatglm3-6b"), paths, _hubs(_closed(), _closed(), mirror=_closed()))
    assert offline.verdict == "fail"
    assert "ChatGLM3-6B is not downloaded and Hugging Face or ModelScope cannot be reached" in offline.detail
    assert "HF_ENDPOINT" in offline.fix
    unknown = check_model(Request(model="chatglm9-6b"), paths, [])
    assert unknown.verdict == "fail" and "unknown model" in unknown.detail


def test_a_model_on_disk_or_a_folder(tmp_path, chatglm3_dir):
    paths = default_paths()
    here = check_model(Request(model=str(chatglm3_dir)), paths, [])
    assert here.verdict == "ok" and str(chatglm3_dir) in here.detail
    broken = tmp_path / "half-a-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    half = check_model(Request(model=str(broken)), paths, [])
    assert half.verdict == "fail" and "incomplete" in half.detail and "weights" in half.detail


@pytest.mark.slow
def test_doctor_exits_1_when_the_model_asked_for_cannot_be_had(tmp_path):
    closed = _closed()
    env = dict(os.environ, HF_ENDPOINT=closed, MODELSCOPE_ENDPOINT=closed, GLMTUI_HOME=str(tmp_path / "home"))
    run = subprocess.run([sys.executable, "-m", "glmtui.cli", "doctor", "--json", "--device", "cpu",
                          "--model", "glm-edge-1.5b-chat"], capture_output=True, text=True, timeout=180, env=env)
    report = json.loads(run.stdout)
    by_key = {c["key"]: c for c in report["checks"]}
    assert by_key["model"]["verdict"] == "fail", by_key["model"]
    assert run.returncode == 1 == report["exit_code"]
    assert [c["key"] for c in report["checks"]][-2:] == ["model", "history"]
    assert "cannot be reached" in by_key["model"]["detail"] and by_key["model"]["fix"]
