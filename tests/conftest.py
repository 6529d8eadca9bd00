"""Shared fixtures: tiny real models built once per test session, and an isolated GLMTUI_HOME."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def native_glm(models_root) -> Path:
    return tiny_models.build_native_glm(models_root / "tiny-glm")


@pytest.fixture(scope="session")
def chatglm3_pair(models_root) -> tuple[Path, Path]:
    """(ChatGLM3-layout folder with .bin shards, the same weights saved natively)."""
    layout = tiny_models.build_chatglm3(models_root / "tiny-chatglm3", native_copy=models_root / "tiny-chatglm3-native")
    return layout, models_root / "tiny-chatglm3-native"


@pytest.fixture(scope="session")
def chatglm3_dir(chatglm3_pair) -> Path:
    return chatglm3_pair[0]


@pytest.fixture(scope="session")
def chatty_chatglm3(models_root) -> Path:
    """A ChatGLM3-layout model that never emits a stop token: every reply runs to max_new_tokens."""
    return tiny_models.build_chatglm3(models_root / "tiny-chatglm3-chatty", never_stop=True)


@pytest.fixture(scope="session")
def short_context_chatty(models_root) -> Path:
    """A ChatGLM3 that never stops on its own and has 64 tokens of context: every long enough
    reply runs into the context, and a long prompt does not fit at all."""
    return tiny_models.build_chatglm3(models_root / "tiny-chatglm3-ctx64", never_stop=True, context=64)


@pytest.fixture(scope="module")
def served(chatglm3_dir):
    """(worker, event log, API server) on the tiny ChatGLM3, served as "tiny-chatglm3"; one per test module."""
    from engine_helpers import EventLog
    from glmtui.engine.events import Loaded
    from glmtui.engine.worker import InferenceWorker
    from glmtui.server import ServerThread, create_app

    log = EventLog()
    worker = InferenceWorker(log).start()
    assert isinstance(log.wait(worker.load(str(chatglm3_dir), "fp32")), Loaded)
    server = ServerThread(create_app(worker, "tiny-chatglm3")).start()
    yield worker, log, server
    server.stop()
    worker.shutdown()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Never touch the real user's data or config folders."""
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "glmtui-home"))
    return tmp_path / "glmtui-home"
