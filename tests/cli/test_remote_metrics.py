"""A remote engine's /metrics: the parser over the recorded vLLM and SGLang texts (tests/data),
the poller and the monitor pane against a live server on 127.0.0.1 serving them."""

from __future__ import annotations

import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from glmtui.remote_metrics import MetricsPoller, engine_figures, metrics_url, parse_exposition
from helpers import FrozenSampler, free_port, host_only_snapshot, wait_for

DATA = Path(__file__).resolve().parents[1] / "data"
VLLM = (DATA / "metrics_vllm.txt").read_text()
SGLANG = (DATA / "metrics_sglang.txt").read_text()


def with_generated(text: str, tokens: float) -> str:
    """The vLLM text with its generation-token counter at ``tokens``."""
    out = []
    for line in text.splitlines():
        if line.startswith("vllm:generation_tokens_total{"):
            line = line.rsplit(" ", 1)[0] + f" {tokens}"
        out.append(line)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ the parser


def test_vllm_figures():
    figures = engine_figures(VLLM, 100.0)
    assert figures.server == "vLLM"
    assert figures.kv_cache_usage == pytest.approx(0.4152046783625731)
    assert (figures.running, figures.waiting) == (3, 2)
    assert figures.throughput is None and figures.generation_tokens == 51200.0  # one sample: no rate yet


def test_vllm_throughput_from_two_samples():
    first = engine_figures(VLLM, 100.0)
    second = engine_figures(with_generated(VLLM, 51200 + 2 * 1843), 102.0, first)
    assert second.throughput == pytest.approx(1843.0)
    # a restarted server starts its counter again: no rate rather than a negative one
    assert engine_figures(with_generated(VLLM, 10), 104.0, second).throughput is None
    assert engine_figures(VLLM, 100.0, first).throughput is None  # no time between them


def test_vllm_older_kv_name_and_several_engines():
    older = VLLM.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    assert engine_figures(older, 0.0).kv_cache_usage == pytest.approx(0.4152046783625731)
    second_engine = "\n".join(
        line.replace('engine="0"', 'engine="1"').replace("0.4152046783625731", "0.9").replace(" 3.0", " 5.0")
        for line in VLLM.splitlines() if line.startswith("vllm:")
    )
    both = engine_figures(VLLM + second_engine + "\n", 0.0)
    assert both.running == 3 + 5 and both.waiting == 2 + 2 and both.kv_cache_usage == pytest.approx(0.9)
    assert both.generation_tokens == 2 * 51200.0


def test_sglang_figures():
    figures = engine_figures(SGLANG, 0.0)
    assert figures.server == "SGLang"
    assert figures.kv_cache_usage == pytest.approx(0.73)
    assert (figures.running, figures.waiting) == (48, 17)
    assert figures.throughput == pytest.approx(1843.2716379414326)
    # clients that write the colon as an underscore
    underscored = engine_figures(SGLANG.replace("sglang:", "sglang_"), 0.0)
    assert (underscored.running, underscored.waiting, underscored.kv_cache_usage) == (48, 17, pytest.approx(0.73))


def test_other_servers_give_nothing():
    glmtui_like = "# HELP process_cpu_seconds_total CPU\n# TYPE process_cpu_seconds_total counter\n" \
                  "process_cpu_seconds_total 12.5\npython_info{implementation=\"CPython\"} 1.0\n"
    assert engine_figures(glmtui_like, 0.0) is None
    assert engine_figures("", 0.0) is None
    assert engine_figures("<html><body>Not Found</body></html>", 0.0) is None


def test_exposition_details():
    text = ('# a comment\n'
            'm{a="x\\"y,z}",b="line\\nbreak",c="back\\\\slash"} 1.5e+03 1700000000000\n'
            'n NaN\n'
            'o{le="+Inf"} +Inf\n'
            'not a sample line\n'
            'p{broken="} 3\n'
            'q -2\n')
    samples = {s.name: s for s in parse_exposition(text)}
    assert dict(samples["m"].labels) == {"a": 'x"y,z}', "b": "line\nbreak", "c": "back\\slash"}
    assert samples["m"].value == 1500.0
    assert math.isnan(samples["n"].value) and samples["o"].value == math.inf and samples["q"].value == -2
    assert "p" not in samples and "not" not in samples


@pytest.mark.parametrize("endpoint,url", [
    ("http://gpu-box:8000/v1", "http://gpu-box:8000/metrics"),
    ("http://gpu-box:8000/v1/", "http://gpu-box:8000/metrics"),
    ("gpu-box:30000", "http://gpu-box:30000/metrics"),
    ("https://example.org/llm/v1", "https://example.org/llm/metrics"),
])
def test_metrics_url(endpoint, url):
    assert metrics_url(endpoint) == url


# ------------------------------------------------------------------ a live server


class MetricsServer:
    """127.0.0.1: /metrics answers ``text`` (404 while it is None); /v1/models names one model."""

    def __init__(self, text):
        self.text = text
        self.requests: list[str] = []
        self.auth: list = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append(self.path)
                owner.auth.append(self.headers.get("Authorization"))
                if self.path == "/metrics" and owner.text is not None:
                    body, kind, status = owner.text.encode(), "text/plain; version=0.0.4; charset=utf-8", 200
                elif self.path == "/v1/models":
                    body, kind, status = json.dumps({"object": "list", "data": [
                        {"id": "glm-4-9b-chat", "object": "model", "max_model_len": 8192}]}).encode(), \
                        "application/json", 200
                else:
                    body, kind, status = b'{"detail":"Not Found"}', "application/json", 404
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metrics_server():
    server = MetricsServer(VLLM)
    yield server
    server.close()


def test_poller_against_a_live_server(metrics_server):
    clock = iter([10.0, 12.0, 14.0]).__next__
    poller = MetricsPoller(metrics_server.url + "/v1", api_key="sk-test", clock=clock)
    first = poller.poll()
    assert first.server == "vLLM" and first.running == 3 and first.throughput is None
    assert metrics_server.requests[-1] == "/metrics" and metrics_server.auth[-1] == "Bearer sk-test"
    metrics_server.text = with_generated(VLLM, 51200 + 1000)
    assert poller.poll().throughput == pytest.approx(500.0)
    metrics_server.text = None  # a server without /metrics
    assert poller.poll() is None and poller.missing
    poller.close()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    unreachable = MetricsPoller(closed, timeout=1.0)
    assert unreachable.poll() is None and not unreachable.missing
    unreachable.close()


async def test_the_metrics_view_polls_the_server_it_is_given(metrics_server):
    """In an app with neither an endpoint nor an engine, the view polls the server it was given (its URL and
    key asked before each poll): nothing while the URL is not known, then that server, with that key."""
    from textual.app import App

    from glmtui.ui.engine_metrics import RemoteMetricsView

    where: dict = {"url": None}

    class Bare(App):
        def compose(self):
            yield RemoteMetricsView(lambda: (where["url"], "sk-given"), interval=0.1, id="remote-metrics")

    app = Bare()
    async with app.run_test(size=(100, 5)) as pilot:
        view = app.query_one(RemoteMetricsView)
        await pilot.pause(0.3)
        assert not view.display and metrics_server.requests == []
        where["url"] = metrics_server.url
        await wait_for(pilot, lambda: view.figures is not None and view.display, 20, interval=0.1)
        assert str(view.render()).startswith("vLLM KV 42%") and metrics_server.auth[-1] == "Bearer sk-given"


@pytest.mark.slow
async def test_monitor_pane_shows_the_servers_figures(metrics_server):
    from glmtui.ui.app import GlmApp
    from glmtui.ui.engine_metrics import RemoteMetricsView

    app = GlmApp(endpoint=metrics_server.url, sampler=FrozenSampler(host_only_snapshot()))
    async with app.run_test(size=(220, 50)) as pilot:
        view = app.query_one("#remote-metrics", RemoteMetricsView)
        await wait_for(pilot, lambda: view.figures is not None and view.display, 20, interval=0.1)
        text = str(view.render())
        assert text.startswith("vLLM KV 42%") and "run 3 · wait 2" in text
        # the next poll (2 s later) has a rate
        metrics_server.text = with_generated(VLLM, 51200 + 4000)
        await wait_for(pilot, lambda: view.figures.throughput is not None, 15, interval=0.1)
        assert "tok/s" in str(view.render()) and view.figures.throughput > 0
        metrics_server.text = SGLANG
        await wait_for(pilot, lambda: view.figures.server == "SGLang", 20, interval=0.1)
        assert "SGLang KV 73%" in str(view.render()) and "run 48 · wait 17 · 1843 tok/s" in str(view.render())
        metrics_server.text = None  # 404: nothing shown
        await wait_for(pilot, lambda: not view.display, 20, interval=0.1)


@pytest.mark.slow
async def test_no_endpoint_no_metrics_row(metrics_server):
    from glmtui.ui.app import GlmApp
    from glmtui.ui.engine_metrics import RemoteMetricsView

    app = GlmApp(mode="fp32", sampler=FrozenSampler(host_only_snapshot()))
    async with app.run_test(size=(220, 50)) as pilot:
        await pilot.pause(0.5)
        view = app.query_one("#remote-metrics", RemoteMetricsView)
        assert not view.display and view.figures is None
        assert not [w for w in app.workers if w.name == "remote-metrics"]


# A stand-in for vLLM's OpenAI server at the process and network edge: /health, /v1/models and the
# recorded /metrics text, so the managed engine's whole start -> poll path runs without vLLM installed.
_STAND_IN = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, metrics = int(sys.argv[1]), open(sys.argv[2], "rb").read()
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body, status = {"/health": (b"", 200), "/metrics": (metrics, 200),
                        "/v1/models": (json.dumps({"object": "list", "data": [{"id": "m", "object": "model",
                                        "max_model_len": 2048}]}).encode(), 200)}.get(self.path, (b"", 404))
        self.send_response(status); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.mark.slow
async def test_a_managed_servers_metrics_appear_once_it_has_started(tmp_path):
    """--engine vllm: the server's address is known only after a load; the monitor polls it from then on."""
    from glmtui.engine.managed import ManagedServer, ServerPlan, free_port
    from glmtui.ui.app import GlmApp
    from glmtui.ui.engine_metrics import RemoteMetricsView

    metrics = tmp_path / "metrics.txt"
    metrics.write_text(VLLM)

    def planner(path, mode, device):
        port = free_port()
        return ServerPlan((sys.executable, "-c", _STAND_IN, str(port), str(metrics)), port, "m", "bf16", "cpu")

    engine = ManagedServer(planner, log_dir=tmp_path / "logs")
    app = GlmApp(engine=engine, sampler=FrozenSampler(host_only_snapshot()))
    async with app.run_test(size=(220, 50)) as pilot:
        view = app.query_one("#remote-metrics", RemoteMetricsView)
        await pilot.pause(0.5)
        assert not view.display  # nothing started yet
        engine.load(str(tmp_path), "bf16", "cpu")
        await wait_for(pilot, lambda: view.figures is not None and view.display, 40, interval=0.1)
        assert str(view.render()).startswith("vLLM KV 42%")
        engine.unload()
        await wait_for(pilot, lambda: not view.display, 30, interval=0.1)
