"""The Models pane's download source: `s` switches Hugging Face / ModelScope, remembered in config.toml."""

from __future__ import annotations

from glmtui.config import default_paths
from glmtui.ui import prefs
from glmtui.ui.app import GlmApp
from test_ui import fake_hub, quiet_sampler, screen_text, wait_for  # noqa: F401 - fixtures


async def test_switching_to_modelscope_downloads_from_it(fake_hub, quiet_sampler, monkeypatch, tmp_path_factory):
    from hubserver import build_tiny_model

    fake_hub.add_folder("ZhipuAI/glm-edge-1.5b-chat", build_tiny_model(tmp_path_factory.mktemp("ms-src")))
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake_hub.url)
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(160, 48)) as pilot:
        ol = app.models_pane.option_list
        ol.focus()
        ol.highlighted = [ol.get_option_at_index(i).id for i in range(ol.option_count)].index("cat:glm-edge-1.5b-chat")
        await pilot.pause()
        assert "downloads from Hugging Face" in screen_text(app)
        await pilot.press("s")
        await pilot.pause()
        assert "downloads from ModelScope" in screen_text(app)
        await pilot.press("d")
        await wait_for(pilot, lambda: any(j.state == "done" for j in app.models_pane.jobs.values()), what="download")
        job = next(iter(app.models_pane.jobs.values()))
        assert job.source == "modelscope" and job.repo_id == "ZhipuAI/glm-edge-1.5b-chat"
    assert prefs.load_prefs(default_paths().config_file)[0]["download_source"] == "modelscope"
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        assert app.download_source == "modelscope"
