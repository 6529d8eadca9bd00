"""The Models pane's downloads: `s` switches Hugging Face / ModelScope (remembered in config.toml);
with no network, `d` ends in one clear line."""

from __future__ import annotations

import pytest

from glmtui.config import default_paths
from glmtui.ui import prefs
from glmtui.ui.app import GlmApp
from helpers import free_port, screen_text, wait_for

SIZE = (220, 50)  # wide enough for the Models pane to be on screen beside the chat


@pytest.mark.slow
async def test_switching_to_modelscope_downloads_from_it(fake_hub, quiet_sampler, monkeypatch, tmp_path_factory):
    from hubserver import build_tiny_model

    fake_hub.add_folder("ZhipuAI/glm-edge-1.5b-chat", build_tiny_model(tmp_path_factory.mktemp("ms-src")))
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake_hub.url)
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=SIZE) as pilot:
        ol = app.models_pane.option_list
        ol.focus()
        ol.highlighted = [ol.get_option_at_index(i).id for i in range(ol.option_count)].index("cat:glm-edge-1.5b-chat")
        await pilot.pause()
        assert "downloads from Hugging Face" in screen_text(app)
        await pilot.press("s")
        await pilot.pause()
        assert "downloads from ModelScope" in screen_text(app)
        await pilot.press("d")
        await wait_for(pilot, lambda: any(j.state == "done" for j in app.model.jobs.values()), what="download")
        job = next(iter(app.model.jobs.values()))
        assert job.source == "modelscope" and job.repo_id == "ZhipuAI/glm-edge-1.5b-chat"
    assert prefs.load_prefs(default_paths().config_file)[0]["download_source"] == "modelscope"
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.download_source == "modelscope"


@pytest.mark.slow
async def test_download_with_no_network_says_so_in_one_line(quiet_sampler, monkeypatch):
    """The blocker in the Models pane: `d` on chatglm3-6b with HF_ENDPOINT unset and huggingface.co out of
    reach. The network is taken away with a proxy on a closed 127.0.0.1 port: nothing leaves the machine."""
    import time

    import huggingface_hub

    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for var in ("HF_ENDPOINT", "MODELSCOPE_ENDPOINT", "HF_HUB_OFFLINE", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(var, proxy)
        monkeypatch.setenv(var.lower(), proxy)
    huggingface_hub.close_session()  # its shared client reads the proxy variables when it is made
    # As in a fresh process: huggingface_hub's submodules are not attributes of the package until
    # imported by name (reading huggingface_hub.constants crashed every default download).
    monkeypatch.delattr(huggingface_hub, "constants", raising=False)
    try:
        app = GlmApp(mode="fp32", sampler=quiet_sampler)
        async with app.run_test(size=SIZE) as pilot:
            ol = app.models_pane.option_list
            ol.focus()
            ol.highlighted = [ol.get_option_at_index(i).id for i in range(ol.option_count)].index("cat:chatglm3-6b")
            await pilot.pause()
            t0 = time.monotonic()
            await pilot.press("d")
            await wait_for(pilot, lambda: any(j.finished for j in app.model.jobs.values()), what="failure")
            assert time.monotonic() - t0 < 60  # a second or two unloaded
            job = next(iter(app.model.jobs.values()))
            assert job.state == "failed" and job.error_type == "NetworkError", job
            assert job.error.startswith("cannot reach https://huggingface.co: connection refused; check the network")
            assert "\n" not in job.error
            await pilot.pause()
            detail = app.models_pane.query_one("#model-detail")
            assert f"\ndownload failed: {job.error}\n" in detail.content.plain  # the pane wraps it to its width
            assert "download failed: cannot reach" in screen_text(app)
            assert app.is_running
    finally:
        huggingface_hub.close_session()  # drop the client that has the proxy
