"""`--engine`: which engine runs a local model, for the TUI, glmtui chat and glmtui serve.

vLLM is not installed in the test environment, which is the default a user meets: every front end
must say so in one line (the real vLLM runs in the opt-in peer tests, `bash dev.sh test-peer`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from glmtui.engine.choose import local_engine
from glmtui.engine.managed import ManagedServer
from glmtui.engine.process import EngineProcess
from glmtui.engine.worker import InferenceWorker

CLI = "import sys; from glmtui.cli import main; sys.exit(main())"


def test_the_engine_kinds():
    assert isinstance(local_engine(), EngineProcess)
    assert isinstance(local_engine(in_process=True), InferenceWorker)
    assert isinstance(local_engine("vllm"), ManagedServer)
    with pytest.raises(ValueError, match="unknown engine"):
        local_engine("llama.cpp")


def _run(tmp_path, *argv, stdin=""):
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path / "home"))
    return subprocess.run([sys.executable, "-c", CLI, *argv], input=stdin, capture_output=True, text=True,
                          timeout=120, env=env)


def test_line_chat_with_vllm_missing_says_how_to_get_it(tmp_path, chatglm3_dir):
    done = _run(tmp_path, "chat", "--engine", "vllm", "--model", str(chatglm3_dir), stdin="hello\n")
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert "vLLM is not installed for this interpreter" in done.stderr and "[vllm]" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_serve_with_vllm_missing_fails_in_one_line(tmp_path, chatglm3_dir):
    done = _run(tmp_path, "serve", "--engine", "vllm", "--model", str(chatglm3_dir), "--port", "0")
    assert done.returncode == 1, done
    assert "cannot load" in done.stderr and "vLLM is not installed" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_configured_interpreter_is_used(tmp_path, chatglm3_dir):
    """[vllm] python in config.toml names the interpreter that runs vLLM (here one that does not exist)."""
    config = tmp_path / "home" / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[vllm]\npython = "/nonexistent/python"\n')
    done = _run(tmp_path, "chat", "--engine", "vllm", "--model", str(chatglm3_dir), stdin="hello\n")
    assert done.returncode == 1 and "/nonexistent/python" in done.stderr and "not an executable" in done.stderr
