"""Shared fixtures: tiny real models built once per test run, and an isolated GLMTUI_HOME."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from filelock import FileLock

# Torch's OpenMP threads spin while they wait for work (libgomp's default): with two xdist workers and their engine
# processes on two cores that spinning took most of the CPU of a test that generates. Passive waiting keeps the same
# threads and code paths. Set before torch is imported here or in a child process (they inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Tests live in room folders (engine/, store/, server/, hub/, ui/, agent/, cli/); what they share is here
# (fixtures) and in the modules next to this file (helpers, fake_nvml, terminals, agent_helpers, tiny_models ...).
sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # after the sys.path line
from helpers import FrozenSampler, host_only_snapshot  # after the sys.path line


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder under this run's temporary root that every pytest-xdist worker sees (without xdist: the
    session's own basetemp), so a session fixture can build something once for all workers."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # xdist gives each worker basetemp/<worker id>
    folder = base / name
    folder.mkdir(exist_ok=True)
    return folder


def built_once(dest: Path, build) -> Path:
    """``build()`` makes ``dest``; the first worker to get here builds it under a file lock, the others
    wait and reuse it. The marker is written last, so a build that failed half-way is redone."""
    with FileLock(f"{dest}.lock"):
        marker = dest.with_name(dest.name + ".built")
        if not marker.exists():
            shutil.rmtree(dest, ignore_errors=True)
            build()
            marker.touch()
    return dest


MODEL_CACHE_ENV = "GLMTUI_TEST_MODEL_CACHE"  # a folder for the built models; "" builds them for this run only


def model_cache_folder() -> Path | None:
    """Where the tiny models are kept between runs: a folder named by what builds them (this file,
    tiny_models.py, hubserver.py, the versions of the libraries that write them), so a change to any of those builds
    anew. Tests never write into these folders (they copy what they edit)."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    base = os.environ.get(MODEL_CACHE_ENV, str(Path(__file__).resolve().parents[1] / ".cache" / "test-models"))
    if not base:
        return None
    key = hashlib.sha256()
    for source in (Path(__file__), Path(tiny_models.__file__), Path(__file__).with_name("hubserver.py")):
        key.update(source.read_bytes())
    for package in ("torch", "transformers", "tokenizers", "sentencepiece", "safetensors"):
        try:
            key.update(f"{package} {version(package)};".encode())
        except PackageNotFoundError:
            key.update(f"{package} -;".encode())
    folder = Path(base) / key.hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    """The tiny models' folder: kept between runs (model_cache_folder) unless GLMTUI_TEST_MODEL_CACHE="",
    then one per run, shared by its xdist workers. Each model is built once, under a lock (built_once)."""
    return model_cache_folder() or shared_dir(tmp_path_factory, "models")


@pytest.fixture(scope="session")
def native_glm(models_root) -> Path:
    dest = models_root / "tiny-glm"
    return built_once(dest, lambda: tiny_models.build_native_glm(dest))


@pytest.fixture(scope="session")
def chatglm3_pair(models_root) -> tuple[Path, Path]:
    """(ChatGLM3-layout folder with .bin shards, the same weights saved natively)."""
    layout, native = models_root / "tiny-chatglm3", models_root / "tiny-chatglm3-native"

    def build():
        shutil.rmtree(native, ignore_errors=True)
        tiny_models.build_chatglm3(layout, native_copy=native)

    return built_once(layout, build), native


@pytest.fixture(scope="session")
def chatglm3_dir(chatglm3_pair) -> Path:
    return chatglm3_pair[0]


@pytest.fixture(scope="session")
def chatty_chatglm3(models_root) -> Path:
    """A ChatGLM3-layout model that never emits a stop token: every reply runs to max_new_tokens."""
    dest = models_root / "tiny-chatglm3-chatty"
    return built_once(dest, lambda: tiny_models.build_chatglm3(dest, never_stop=True))


@pytest.fixture(scope="session")
def short_context_chatty(models_root) -> Path:
    """A ChatGLM3 that never stops on its own and has 64 tokens of context: every long enough
    reply runs into the context, and a long prompt does not fit at all."""
    dest = models_root / "tiny-chatglm3-ctx64"
    return built_once(dest, lambda: tiny_models.build_chatglm3(dest, never_stop=True, context=64))


@pytest.fixture(scope="session")
def thinking_dir(models_root) -> Path:
    """A tiny GLM-Z1: Glm4ForCausalLM with <think> tokens and a reasoning chat template."""
    dest = models_root / "tiny-z1"
    return built_once(dest, lambda: tiny_models.build_glm4_thinking(dest))


@pytest.fixture(scope="session")
def inside_dir(thinking_dir, models_root) -> Path:
    """The same model with a template that opens <think> in the prompt (GLM-Z1-0414, GLM-4.7)."""
    dest = models_root / "tiny-z1-inside"

    def build():
        shutil.copytree(thinking_dir, dest)
        config = json.loads((dest / "tokenizer_config.json").read_text())
        config["chat_template"] = tiny_models.INSIDE_THINKING_CHAT_TEMPLATE
        (dest / "tokenizer_config.json").write_text(json.dumps(config))
        (dest / "chat_template.jinja").unlink(missing_ok=True)

    return built_once(dest, build)


@pytest.fixture
def quiet_sampler() -> FrozenSampler:
    """The monitor's sampler for app tests: a machine without a GPU, figures that never change."""
    return FrozenSampler(host_only_snapshot())


@pytest.fixture(scope="session")
def hub_source_model(models_root) -> Path:
    """The tiny model the fake hub serves (hubserver.build_tiny_model: 3 safetensors shards + index); the
    hub reads its files into memory, so one folder serves every test."""
    from hubserver import build_tiny_model

    dest = models_root / "hub-glm"
    return built_once(dest, lambda: build_tiny_model(dest))


@pytest.fixture
def fake_hub(hub_source_model, monkeypatch, tmp_path):
    """The fake hub (tests/hubserver.py) on 127.0.0.1 serving a tiny model as THUDM/glm-edge-1.5b-chat,
    with every hub endpoint of glmtui pointed at it."""
    from hubserver import FakeHub, point_hubs_at

    with FakeHub() as fake:
        fake.add_folder("THUDM/glm-edge-1.5b-chat", hub_source_model)  # a catalogue id, served by the fake hub
        point_hubs_at(fake, monkeypatch, tmp_path)
        yield fake


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


@pytest.fixture
def in_process_engine(monkeypatch):
    """The app runs its model in a thread of the test's process: no engine process (and its torch import)
    per load. For app tests whose subject is not the engine kind; the default, an engine process, has its
    own tests (tests/ui/test_ui_engine_process.py). Modules use it with
    ``pytestmark = pytest.mark.usefixtures("in_process_engine")``."""
    from glmtui.ui.app import GlmApp

    monkeypatch.setattr(GlmApp, "LOCAL_ENGINE", "thread")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Never touch the real user's data or config folders."""
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "glmtui-home"))
    return tmp_path / "glmtui-home"
