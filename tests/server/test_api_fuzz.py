"""Fuzz `glmtui serve` with schemathesis against its own OpenAPI schema: no input gives a 5xx.

A real tiny ChatGLM3 model with a short context (so the longest generation a
valid request can ask for stays short) serves a live server on 127.0.0.1;
schemathesis generates valid and invalid requests for every operation.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 - after importorskip
from schemathesis.checks import not_a_server_error  # noqa: E402 - after importorskip

import tiny_models  # noqa: E402 - after importorskip
from engine_helpers import EventLog  # noqa: E402 - after importorskip
from glmtui.engine.events import Loaded  # noqa: E402 - after importorskip
from glmtui.engine.worker import InferenceWorker  # noqa: E402 - after importorskip
from glmtui.server import ServerThread, create_app  # noqa: E402 - after importorskip

API_KEY = "fuzz-key"


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    folder = tiny_models.build_chatglm3(tmp_path_factory.mktemp("fuzz") / "short-ctx", context=96)
    log = EventLog()
    worker = InferenceWorker(log).start()
    assert isinstance(log.wait(worker.load(str(folder), "fp32")), Loaded)
    server = ServerThread(create_app(worker, "tiny", api_key=API_KEY)).start()
    yield schemathesis.openapi.from_url(server.url + "/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"})
    server.stop()
    worker.shutdown()


schema = schemathesis.pytest.from_fixture("api_schema")


# 30 examples per operation (was 60): the time goes into generating examples and the replies they ask for;
# the explicit edge cases (limits, bad parameters) have tests of their own in test_server.py.
@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_a_server_error(case):
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {API_KEY}"}
    response = case.call(timeout=60)
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, (response.status_code, response.text[:500])


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_but_health_needs_the_key(case):
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    response = case.call(timeout=60)
    if case.path == "/health":
        assert response.status_code in ((200, 503) if case.method.upper() == "GET" else (405,)), response.text
    else:
        assert response.status_code == 401, (case.path, response.status_code, response.text[:300])
        assert response.json()["error"]["code"] in ("invalid_api_key", "missing_api_key", "unauthorized") or \
            response.json()["error"]["message"]
