"""`glmtui web`: the command line it builds, and the real thing serving its page over one API server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import psutil
import pytest

from glmtui.web import app_command, serve_argv
from helpers import free_port, wait_http_ok


def test_app_command_runs_the_tui_against_the_endpoint():
    command = app_command("http://127.0.0.1:8123", python="/opt/my env/bin/python")
    assert shlex.split(command) == ["/opt/my env/bin/python", "-m", "glmtui.cli", "--endpoint",
                                    "http://127.0.0.1:8123"]
    # and that command line parses as the TUI with --endpoint
    from glmtui.cli import build_parser

    args = build_parser().parse_args(shlex.split(command)[3:])
    assert args.command is None and args.endpoint == "http://127.0.0.1:8123"


def test_serve_argv_starts_one_loopback_api_server():
    args = SimpleNamespace(model="/models/chatglm3-6b", mode="int4", device="cuda:1")
    argv = serve_argv(args, 9001, python="py")
    assert argv[:4] == ["py", "-m", "glmtui.cli", "serve"]
    from glmtui.cli import build_parser

    parsed = build_parser().parse_args(argv[3:])
    assert (parsed.model, parsed.mode, parsed.device, parsed.host, parsed.port) == (
        "/models/chatglm3-6b", "int4", "cuda:1", "127.0.0.1", 9001)
    assert parsed.parent_pid == os.getpid() and parsed.api_key is None  # the key travels in the environment


class _Output:
    def __init__(self, stream):
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in iter(stream.readline, b""):
            self.text += line.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def web(chatglm3_dir, tmp_path_factory):
    port, api_port = free_port(), free_port()
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path_factory.mktemp("web-home")))
    env.pop("GLMTUI_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "glmtui.cli", "web", "--model", str(chatglm3_dir), "--mode", "fp32",
         "--port", str(port), "--api-port", str(api_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    output = _Output(proc.stdout)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(url, proc, 180, output=lambda: output.text)
    except BaseException:
        proc.kill()
        raise
    yield proc, url, f"http://127.0.0.1:{api_port}", output
    descendants = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # Ctrl-C ends the API server and every app session with it
    _, alive = psutil.wait_procs(descendants, timeout=15)
    assert not alive, [p.cmdline() for p in alive]


@pytest.mark.slow  # the `web` fixture starts glmtui web and its API server
def test_web_serves_the_textual_page_over_one_api_server(web):
    proc, url, api, output = web
    page = httpx.get(url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "textual.js" in page.text and "textual-terminal" in page.text and "/ws" in page.text
    assert "glmtui" in page.text  # the title
    # the API server it started: loopback, model loaded, key required
    health = httpx.get(api + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-chatglm3"
    assert httpx.get(api + "/v1/models").status_code == 401
    children = psutil.Process(proc.pid).children(recursive=True)
    serve = [c for c in children if "serve" in c.cmdline()]
    assert len(serve) == 1
    assert "--endpoint " in output.text and api in output.text  # the session command it logged


@pytest.mark.slow  # the `web` fixture starts glmtui web and its API server
def test_a_browser_session_runs_the_tui_against_the_shared_api(web):
    pytest.importorskip("glmtui.ui.app")
    import aiohttp

    proc, url, api, output = web
    received: list = []

    async def session():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url.replace("http", "ws") + "/ws?width=100&height=30") as ws:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        message = await ws.receive(timeout=1)
                    except asyncio.TimeoutError:
                        message = None
                    if message is not None and message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                        received.append(message.data)
                    sessions = [c for c in psutil.Process(proc.pid).children(recursive=True)
                                if "--endpoint" in c.cmdline()]
                    if sessions and len(received) > 5 and '"GET /v1/models HTTP/1.1" 200' in output.text:
                        return sessions[0].cmdline()
                raise AssertionError(f"no app session talked to the API; output: {output.text[-2000:]}")

    cmdline = asyncio.run(session())
    assert cmdline[-2:] == ["--endpoint", api]
    # one model for every session: still exactly one API server process
    assert len([c for c in psutil.Process(proc.pid).children(recursive=True) if "serve" in c.cmdline()]) == 1


@pytest.mark.slow
def test_web_stops_its_api_server(chatglm3_dir, tmp_path):
    port, api_port = free_port(), free_port()
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "glmtui.cli", "web", "--model", str(chatglm3_dir), "--mode", "fp32",
         "--port", str(port), "--api-port", str(api_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}", proc, 180)
        serve = [c for c in psutil.Process(proc.pid).children(recursive=True) if "serve" in c.cmdline()]
        assert len(serve) == 1
        proc.kill()  # even when web dies hard, its API server follows
        proc.wait(10)
        psutil.wait_procs(serve, timeout=15)
        assert not serve[0].is_running() or serve[0].status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_web_without_model_or_server_explains(tmp_path):
    from glmtui.web import DEFAULT_SERVE_URL, _health

    if _health(DEFAULT_SERVE_URL) is not None:
        pytest.skip("a glmtui server really is running on 127.0.0.1:8000 (web would reuse it)")
    run = subprocess.run([sys.executable, "-m", "glmtui.cli", "web", "--port", str(free_port())],
                         capture_output=True, timeout=60, env=dict(os.environ, GLMTUI_HOME=str(tmp_path)))
    assert run.returncode == 2 and b"--model" in run.stderr


# ------------------------------------------------------------------ a real browser (when one is installed)


@contextlib.asynccontextmanager
async def _devtools_page(chromium: str, window: str):
    """Headless Chromium on about:blank; yields ``call(method, **params)``, which sends one DevTools
    protocol command to its page and returns the command's result. The browser is ended on leaving."""
    import json
    import tempfile

    import aiohttp

    port = free_port()
    browser = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={window}",
                                f"--remote-debugging-port={port}", f"--user-data-dir={tempfile.mkdtemp()}",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            targets = None
            for _ in range(150):
                try:
                    targets = await (await http.get(f"http://127.0.0.1:{port}/json")).json()
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
            page = [t for t in targets if t["type"] == "page"][0]
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                counter = 0

                async def call(method, **params):
                    nonlocal counter
                    counter += 1
                    await ws.send_json({"id": counter, "method": method, "params": params})
                    while True:
                        message = json.loads((await ws.receive(timeout=30)).data)
                        if message.get("id") == counter:
                            return message.get("result", {})

                yield call
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()


async def _cdp_chat(chromium: str, url: str, text: str, screenshot, output, ready_marker: str, sent_marker: str):
    """Open ``url`` in headless Chromium (DevTools protocol), type ``text`` + Enter into the app, screenshot."""
    import base64

    async def until(predicate, timeout):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async with _devtools_page(chromium, "1200,800") as call:
        ready_before = output.text.count(ready_marker)
        sent_before = output.text.count(sent_marker)
        await call("Page.enable")
        await call("Page.navigate", url=url)
        # the session's TUI connected to the shared API server
        assert await until(lambda: output.text.count(ready_marker) > ready_before, 60), output.text[-2000:]
        await asyncio.sleep(2.0)  # first paint
        focused = await call("Runtime.evaluate", returnByValue=True, expression=(
            "(() => { const t = document.querySelector('.xterm-helper-textarea');"
            " if (t) { t.focus(); } return !!t; })()"))
        assert focused["result"]["value"] is True
        await call("Input.insertText", text=text)
        await asyncio.sleep(0.3)
        for kind in ("keyDown", "keyUp"):
            await call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                       windowsVirtualKeyCode=13, nativeVirtualKeyCode=13,
                       **({"text": "\r"} if kind == "keyDown" else {}))
        sent = await until(lambda: output.text.count(sent_marker) > sent_before, 60)
        await asyncio.sleep(1.0)
        shot = await call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return sent


@pytest.mark.slow  # the `web` fixture starts glmtui web and its API server
def test_the_tui_in_headless_chromium_chats_through_the_shared_api(web, tmp_path):
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    pytest.importorskip("glmtui.ui.app")
    proc, url, api, output = web
    shot = tmp_path / "glmtui-web.png"
    sent = asyncio.run(_cdp_chat(chromium, url, "hello from a browser", shot, output,
                                 '"GET /v1/models HTTP/1.1" 200', '"POST /v1/chat/completions HTTP/1.1" 200'))
    assert sent, f"the browser's message never reached the API; screenshot: {shot}; output: {output.text[-2000:]}"
    assert shot.stat().st_size > 5000
    assert len([c for c in psutil.Process(proc.pid).children(recursive=True) if "serve" in c.cmdline()]) == 1


# ------------------------------------------------------------------ the access token


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                           ("192.168.1.20", False), ("gpu-box.lan", False), ("", False)])
def test_which_hosts_are_loopback(host, loopback):
    from glmtui.web_gate import is_loopback

    assert is_loopback(host) is loopback


def test_where_the_token_comes_from(tmp_path):
    from glmtui.web_gate import TOKEN_ENV, resolve_token

    config = tmp_path / "config.toml"
    assert resolve_token(None, config, {}) == (None, "")
    config.write_text('[web]\ntoken = "from-the-file"\n')
    assert resolve_token(None, config, {}) == ("from-the-file", f"token under [web] in {config}")
    environ = {TOKEN_ENV: "from-the-variable"}
    assert resolve_token(None, config, environ) == ("from-the-variable", "$GLMTUI_WEB_TOKEN")
    assert TOKEN_ENV not in environ  # the API server and the app sessions do not inherit it
    assert resolve_token("from-the-flag", config, {TOKEN_ENV: "x"}) == ("from-the-flag", "--token")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_a_reachable_host_without_a_token_is_refused(host, tmp_path):
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path))
    env.pop("GLMTUI_WEB_TOKEN", None)
    run = subprocess.run([sys.executable, "-m", "glmtui.cli", "web", "--host", host, "--port", str(free_port()),
                          "--model", "/no/such/model"], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr  # one line, before any API server or model load
    assert f"--host {host}" in lines[0] and "--token" in lines[0] and "GLMTUI_WEB_TOKEN" in lines[0]


@pytest.fixture(scope="module")
def gated_web(tmp_path_factory):
    import secrets

    port = free_port()
    token = "tok-" + secrets.token_urlsafe(16)
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path_factory.mktemp("gated-home")), GLMTUI_WEB_TOKEN=token)
    # an endpoint nobody answers: sessions start (and say they cannot connect), no model needed
    proc = subprocess.Popen(
        [sys.executable, "-m", "glmtui.cli", "web", "--host", "0.0.0.0", "--port", str(port),
         "--endpoint", "http://127.0.0.1:9"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    output = _Output(proc.stdout)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"glmtui web exited: {output.text}")
        try:
            if httpx.get(url + "/login", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"glmtui web did not serve its login page: {output.text}")
    yield proc, url, token, output
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def _sessions(proc) -> list:
    """The app sessions: `glmtui.cli --endpoint URL`, once exec'd (a child forked but not yet exec'd still has the
    web process's command line, `web ... --endpoint`, and its first environment: seen once in CI)."""
    found = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "--endpoint" in cmdline and "web" not in cmdline:
            found.append(child)
    return found


@pytest.mark.slow
def test_without_the_token_nothing_starts(gated_web):
    import aiohttp

    proc, url, token, output = gated_web
    page = httpx.get(url + "/")
    assert page.status_code == 303 and page.headers["location"] == "/login"
    login = httpx.get(url + "/login")
    assert login.status_code == 200 and 'type="password"' in login.text and token not in login.text
    for path in ("/ws?width=80&height=24", "/static/js/textual.js", "/download/x"):
        assert httpx.get(url + path).status_code == 401, path
    wrong = httpx.post(url + "/login", data={"token": token[:-1]})
    assert wrong.status_code == 401 and "not the access token" in wrong.text and "set-cookie" not in wrong.headers
    forged = httpx.get(url + "/", cookies={"glmtui_web_session": token})  # the token is not the session key
    assert forged.status_code == 303

    async def websocket():
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url.replace("http", "ws") + "/ws?width=80&height=24")
            return refused.value.status

    assert asyncio.run(websocket()) == 401
    time.sleep(0.5)
    assert _sessions(proc) == []  # no app process started for anyone without the token


@pytest.mark.slow
def test_with_the_token_the_app_starts_and_the_token_stays_secret(gated_web):
    import aiohttp

    proc, url, token, output = gated_web
    signed = httpx.post(url + "/login", data={"token": token})
    assert signed.status_code == 303 and signed.headers["location"] == "/"
    cookie = signed.cookies.get("glmtui_web_session")
    set_cookie = signed.headers["set-cookie"]
    assert cookie and token not in set_cookie and "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    page = httpx.get(url + "/", cookies={"glmtui_web_session": cookie})
    assert page.status_code == 200 and "textual.js" in page.text and token not in page.text
    # the page's websocket and statics on the address this browser used (not 0.0.0.0: no cookie there)
    assert url.replace("http", "ws") + "/ws" in page.text and "0.0.0.0" not in page.text

    async def session():
        async with aiohttp.ClientSession(cookies={"glmtui_web_session": cookie}) as http:
            async with http.ws_connect(url.replace("http", "ws") + "/ws?width=80&height=24") as ws:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not _sessions(proc):
                    try:
                        await ws.receive(timeout=0.5)
                    except asyncio.TimeoutError:
                        pass
                started = _sessions(proc)
                assert started, output.text[-2000:]
                return started[0].environ()

    environ = asyncio.run(session())
    assert "GLMTUI_WEB_TOKEN" not in environ  # the app sessions never see it
    from glmtui.ui.agent_view import execution_allowed

    # served on 0.0.0.0: the sessions know it, and their Tool/Code modes run nothing
    assert environ.get("GLMTUI_WEB_HOST") == "0.0.0.0" and not execution_allowed(environ)
    # the URL it printed, where the token comes from, and never the token itself
    assert f"open http://{socket.gethostname()}:{url.rsplit(':', 1)[1]}/" in output.text
    assert "$GLMTUI_WEB_TOKEN" in output.text
    assert token not in output.text


async def _cdp_login(chromium: str, url: str, token: str, proc) -> tuple[str, bool]:
    """Headless Chromium: open ``url``, sign in with ``token`` through the form; (the page's URL after
    the login, whether the app's terminal appeared and a session process started)."""
    import json

    async with _devtools_page(chromium, "1000,700") as call:
        async def evaluate(expression):
            answer = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            return answer["result"].get("value")

        async def until(expression, timeout):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if await evaluate(expression):
                    return True
                await asyncio.sleep(0.3)
            return False

        await call("Page.enable")
        await call("Page.navigate", url=url + "/")
        assert await until("location.pathname === '/login' && !!document.querySelector('#token')", 30)
        await evaluate(f"document.querySelector('#token').value = {json.dumps(token)};"
                       " document.querySelector('form').submit(); true")
        assert await until("location.pathname === '/' && !!document.querySelector('.textual-terminal')", 30), \
            await evaluate("location.href + ' ' + document.body.innerText.slice(0, 200)")
        terminal = await until("!!document.querySelector('.xterm-helper-textarea')", 60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _sessions(proc):
            await asyncio.sleep(0.3)
        return await evaluate("location.href"), terminal and bool(_sessions(proc))


@pytest.mark.slow
def test_a_browser_signs_in_with_the_token(gated_web):
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    pytest.importorskip("glmtui.ui.app")
    proc, url, token, output = gated_web
    href, started = asyncio.run(_cdp_login(chromium, url, token, proc))
    assert href == url + "/" and started, output.text[-2000:]
    assert token not in output.text
