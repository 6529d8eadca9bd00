"""glmtui against a real vLLM (CPU build): the managed engine and `glmtui chat --endpoint`."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time

import httpx
import psutil

from glmtui.engine.events import ChatMessage, Failed, Finished, GenerationParams, Loaded, Unloaded
from glmtui.engine.vllm_engine import make_vllm_engine


def wait_for(events, kinds, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=1.0)
        except queue.Empty:
            continue
        if isinstance(event, kinds):
            return event
    raise AssertionError(f"no {kinds} within {timeout} s")


def test_managed_vllm_loads_streams_reports_metrics_and_unloads(peer_python, peer_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path))
    events: queue.Queue = queue.Queue()
    engine = make_vllm_engine(events.put, python=peer_python, context=2048).start()
    try:
        engine.load(str(peer_model), "bf16", "cpu")
        loaded = wait_for(events, (Loaded, Failed))
        assert isinstance(loaded, Loaded), loaded
        assert any("served by vllm" in note for note in loaded.notes)
        engine.generate([ChatMessage("user", "hello")], GenerationParams(max_new_tokens=32, temperature=0))
        finished = wait_for(events, (Finished, Failed), 120)
        assert isinstance(finished, Finished) and finished.completion_tokens == 32
        metrics = httpx.get(engine.endpoint.removesuffix("/v1") + "/metrics", timeout=10, trust_env=False)
        assert "vllm:num_requests_running" in metrics.text
        pids = engine.server_pids()
        engine.unload()
        wait_for(events, Unloaded, 120)
        time.sleep(1)
        assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    finally:
        engine.shutdown(30)


def test_line_chat_against_vllm_exits_cleanly(peer_python, peer_model, tmp_path):
    """Issue 20: every piped `glmtui chat --endpoint` run printed `Task was destroyed but it is pending!`."""
    from glmtui.engine.managed import free_port

    port = free_port()
    log = open(tmp_path / "vllm.log", "wb")
    server = subprocess.Popen([peer_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(peer_model),
                               "--served-model-name", "m", "--dtype", "bfloat16", "--port", str(port),
                               "--max-model-len", "2048"], stdout=log, stderr=log, start_new_session=True,
                              env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1"))
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        done = subprocess.run([sys.executable, "-m", "glmtui.cli", "chat", "--endpoint", f"127.0.0.1:{port}",
                               "--max-new-tokens", "16", "--temperature", "0"], input="hello\n",
                              capture_output=True, text=True, timeout=120, env=dict(os.environ, GLMTUI_HOME=str(tmp_path)))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()
        assert "Task was destroyed" not in done.stderr
    finally:
        os.killpg(server.pid, 15)
        server.wait(60)


def test_vllm_serves_a_converted_chatglm3_folder(peer_python, tmp_path):
    """Issue 20: vLLM cannot run ChatGLM3's remote code; glmtui's native conversion is what it serves.
    The prompt vLLM builds with the converted chat template is ChatGLM3Format's, id for id."""
    import tiny_models

    from glmtui.engine.convert import convert
    from glmtui.engine.managed import free_port
    from glmtui.engine.prompts import ChatGLM3Format

    source = tiny_models.build_chatglm3(tmp_path / "chatglm3", never_stop=True, hidden=128, layers=2, heads=2,
                                        kv_heads=2, head_dim=64, ffn=384)
    native = convert(source, tmp_path / "chatglm3-native")
    port = free_port()
    log = open(tmp_path / "vllm.log", "wb")
    server = subprocess.Popen([peer_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(native),
                               "--served-model-name", "c3", "--dtype", "bfloat16", "--port", str(port),
                               "--max-model-len", "1024"], stdout=log, stderr=log, start_new_session=True,
                              env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1"))
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        assert server.poll() is None, (tmp_path / "vllm.log").read_text()[-2000:]
        conversation = [ChatMessage("system", "You are ChatGLM3."), ChatMessage("user", "你好, hello")]
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, trust_env=False, json={
            "model": "c3", "max_tokens": 16, "temperature": 0, "return_token_ids": True,
            "messages": [{"role": m.role, "content": m.content} for m in conversation]}).json()
        expected = ChatGLM3Format(source / "tokenizer.model").encode_conversation(conversation)
        assert reply["prompt_token_ids"] == expected
        assert reply["usage"]["completion_tokens"] == 16 and reply["choices"][0]["message"]["content"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(60)
