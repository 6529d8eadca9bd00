"""Security defaults: loopback only, private files, keys (see also test_api_fuzz, test_loading)."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from glmtui.cli import build_parser
from glmtui.config import default_paths
from glmtui.ui.app import GlmApp
from helpers import FrozenSampler, free_port, host_only_snapshot, wait_for, wait_http_ok


def test_network_modes_default_to_loopback():
    parser = build_parser()
    assert parser.parse_args(["serve"]).host == "127.0.0.1"
    assert parser.parse_args(["web"]).host == "127.0.0.1"


@pytest.mark.slow
def test_serve_listens_on_loopback_only(chatglm3_dir):
    port = free_port()
    env = dict(os.environ, GLMTUI_API_KEY="from-the-environment")
    proc = subprocess.Popen([sys.executable, "-m", "glmtui.cli", "serve", "--model", str(chatglm3_dir),
                             "--mode", "fp32", "--port", str(port), "--allow-host", "glmtui.test"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc, 90)
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
        # $GLMTUI_API_KEY is required; the Host must be loopback or an --allow-host name
        url = f"http://127.0.0.1:{port}/v1/models"
        key = {"Authorization": "Bearer from-the-environment"}
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers=key).status_code == 200
        assert httpx.get(url, headers={**key, "Host": f"glmtui.test:{port}"}).status_code == 200
        forged = httpx.get(url, headers={**key, "Host": f"rebound.example:{port}"})
        assert forged.status_code == 400 and forged.json()["error"]["code"] == "host_not_allowed"
    finally:
        proc.terminate()
        proc.wait(15)


async def test_history_and_config_files_are_private(isolated_home):
    app = GlmApp(mode="fp32", sampler=FrozenSampler(host_only_snapshot()))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        app.theme = "glm-paper"  # writes config.toml
        await pilot.pause()
    paths = default_paths()
    assert paths.history_db.exists() and paths.config_file.exists()
    for folder, dirs, files in os.walk(isolated_home):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = stat.S_IMODE(os.stat(path).st_mode)
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}: readable by others"


# ------------------------------------------------------------------ the API server's front door (issue 12)


def test_a_chunked_body_over_the_cap_is_refused_as_it_arrives(served):
    """No Content-Length to check: the bytes read are counted, and 413 comes once the cap is passed."""
    from glmtui.server import MAX_BODY_BYTES

    server = served[2]
    me = psutil.Process()
    peak = [me.memory_info().rss]
    base = peak[0]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    chunk = b'{"model": "tiny-chatglm3", "messages": [' + b" " * (1 << 20)
    sent, started = 0, time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                         "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            while sent < 100 * 1024 * 1024:  # a 100 MB body, unless the server answers first
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    break
            answer = b""
            while b"\r\n\r\n" not in answer:
                part = sock.recv(65536)
                if not part:
                    break
                answer += part
    finally:
        sampling.set()
        sampler.join()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent <= MAX_BODY_BYTES + 8 * len(chunk)  # answered as the cap was passed, not after 100 MB
    assert peak[0] - base < 2 * MAX_BODY_BYTES, f"the server grew by {(peak[0] - base) >> 20} MiB"
    assert time.monotonic() - started < 30
    # the server keeps serving
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_a_small_cap_holds_for_chunked_and_declared_bodies(served):
    from glmtui.server import ServerThread, create_app

    server = ServerThread(create_app(served[0], "tiny-chatglm3", max_body=1000)).start()
    try:
        body = json.dumps({"model": "tiny-chatglm3", "messages": [{"role": "user", "content": "x" * 2000}]})
        url = server.url + "/v1/chat/completions"
        declared = httpx.post(url, content=body, headers={"content-type": "application/json"})
        chunked = httpx.post(url, content=(body[i:i + 100].encode() for i in range(0, len(body), 100)),
                             headers={"content-type": "application/json"})
        for r in (declared, chunked):
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
            assert "1000 bytes" in r.json()["error"]["message"]
        # under the cap, a chunked body is read whole and answered
        small = json.dumps({"model": "tiny-chatglm3", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        r = httpx.post(url, content=(small[i:i + 10].encode() for i in range(0, len(small), 10)),
                       headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    finally:
        server.stop()


def test_a_forged_host_is_refused_dns_rebinding(served):
    import openai

    from glmtui.server import ServerThread, create_app

    worker, _, server = served
    url, port = server.url, server.port
    # a page on rebound.example whose name now points at 127.0.0.1 sends its own name as Host
    for host in (f"rebound.example:{port}", "rebound.example", f"localhost.rebound.example:{port}", f"10.1.2.3:{port}"):
        r = httpx.get(url + "/v1/models", headers={"Host": host})
        assert r.status_code == 400, host
        assert r.json()["error"]["code"] == "host_not_allowed" and "--allow-host" in r.json()["error"]["message"]
        assert httpx.get(url + "/health", headers={"Host": host}).status_code == 400
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST", "localhost:9999"):
        assert httpx.get(url + "/v1/models", headers={"Host": host}).status_code == 200, host
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    assert client.models.list().data[0].id == "tiny-chatglm3"
    # --allow-host names are answered; '*' answers any
    named = ServerThread(create_app(worker, "tiny-chatglm3", allow_hosts=("api.lan",))).start()
    anything = ServerThread(create_app(worker, "tiny-chatglm3", allow_hosts=("*",))).start()
    try:
        assert httpx.get(named.url + "/v1/models", headers={"Host": "api.lan:8000"}).status_code == 200
        assert httpx.get(named.url + "/v1/models", headers={"Host": "other.lan"}).status_code == 400
        assert httpx.get(anything.url + "/v1/models", headers={"Host": "whatever.example"}).status_code == 200
    finally:
        named.stop()
        anything.stop()


def test_host_policy_for_public_binds():
    from glmtui.server.guard import HostPolicy

    every = HostPolicy("0.0.0.0")  # every interface: any IP literal (no rebinding with IPs), names listed only
    assert every.allows("192.168.1.5:8000") and every.allows("[fe80::1]:8000") and every.allows("localhost")
    assert not every.allows("myserver.lan:8000")
    assert HostPolicy("0.0.0.0", ["MyServer.LAN"]).allows("myserver.lan.:8000")
    one = HostPolicy("192.168.1.5")  # one address: that address, loopback, listed names
    assert one.allows("192.168.1.5:8000") and one.allows("127.0.0.1:8000")
    assert not one.allows("192.168.1.6:8000") and not one.allows("evil.example")
    assert HostPolicy("::1").allows("[::1]:8000") and not HostPolicy("::1").allows("[fe80::1]")
    assert HostPolicy("127.0.0.1").allows(None)  # no Host header at all: not a browser


def test_serve_says_a_taken_port_is_taken_before_loading(chatglm3_dir):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "glmtui.cli", "serve", "--model", str(chatglm3_dir),
                               "--mode", "fp32", "--port", str(port)], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0
    assert lines == [f"glmtui serve: port {port} is already in use on 127.0.0.1: stop what uses it "
                     "or pick another with --port"], done.stderr
    assert "serving" not in done.stderr + done.stdout and "loading" not in done.stderr
    assert time.monotonic() - started < 60


async def test_the_api_flag_takes_a_key_from_the_option_or_the_environment(monkeypatch):
    pytest.importorskip("fastapi")
    args = build_parser().parse_args(["--api", "--api-key", "k1", "--allow-host", "a", "--allow-host", "b"])
    assert args.api and args.api_key == "k1" and args.allow_host == ["a", "b"]
    bearer = {"Authorization": "Bearer k1"}
    for option in ("k1", None):  # --api-key, then $GLMTUI_API_KEY
        if option is None:
            monkeypatch.setenv("GLMTUI_API_KEY", "k1")
        app = GlmApp(mode="fp32", api=True, api_port=0, api_key=option, sampler=FrozenSampler(host_only_snapshot()))
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda app=app: app._api_server is not None, 30, "the API server", interval=0.1)
            url = app._api_server.url + "/v1/models"
            async with httpx.AsyncClient() as client:
                assert (await client.get(url)).status_code == 401
                assert (await client.get(url, headers=bearer)).status_code == 200
                assert (await client.get(url, headers={**bearer, "Host": "rebound.example"})).status_code == 400
