"""Mirrors in the Models pane: the endpoint each source downloads from is shown with who set it,
`e` sets it (saved under [hub] in config.toml, used by the next download), and a failed download
suggests the other hub. The hub is the fake one on 127.0.0.1 (tests/hubserver.py)."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from glmtui.config import default_paths, read_table
from glmtui.ui.app import GlmApp
from glmtui.ui.dialogs.endpoint import EndpointModal
from helpers import notifications, screen_text, wait_for

SIZE = (220, 50)  # the Models pane beside the chat
ROW = "cat:glm-edge-1.5b-chat"


def _detail(app) -> str:
    return app.models_pane.query_one("#model-detail").content.plain


async def _highlight(pilot, app, row_id: str) -> None:
    ol = app.models_pane.option_list
    ol.focus()
    ol.highlighted = [ol.get_option_at_index(i).id for i in range(ol.option_count)].index(row_id)
    await pilot.pause()


async def _set_endpoint(pilot, app, value: str) -> EndpointModal:
    await pilot.press("e")
    await wait_for(pilot, lambda: isinstance(app.screen, EndpointModal), 10, "the endpoint dialog")
    modal = app.screen
    field = modal.query_one("#endpoint", Input)
    assert field.has_focus
    field.value = value
    await pilot.press("enter")
    await pilot.pause()
    return modal


@pytest.mark.slow
async def test_the_endpoint_is_shown_set_in_the_models_pane_and_used(quiet_sampler, monkeypatch, tmp_path,
                                                                       tmp_path_factory):
    from hubserver import FakeHub, build_tiny_model, point_hubs_at

    config = default_paths().config_file
    with FakeHub() as hub:
        point_hubs_at(hub, monkeypatch, tmp_path, via="config")  # no variables; tokens and telemetry kept away
        config.write_text('[ui]\ntheme = "glm-paper"\n', encoding="utf-8")  # a user who never set an endpoint
        app = GlmApp(mode="fp32", sampler=quiet_sampler)
        async with app.run_test(size=SIZE) as pilot:
            await _highlight(pilot, app, ROW)
            assert "downloads from Hugging Face https://huggingface.co (s source · e endpoint)" in _detail(app)

            # the repo is not on this hub: the failure says where else to get it
            modal = await _set_endpoint(pilot, app, "hub.example without a scheme")
            assert app.screen is modal and "not an http(s) URL" in screen_text(app)  # refused, still open
            await _set_endpoint_value(pilot, app, hub.url)
            assert not isinstance(app.screen, EndpointModal)
            assert read_table(config, "hub") == {"hf_endpoint": hub.url}
            assert read_table(config, "ui")["theme"] == "glm-paper"  # the other tables are kept
            assert f"downloads from Hugging Face {hub.url} (config.toml)" in _detail(app)
            assert any(f"Hugging Face downloads now come from {hub.url}" in n for n in notifications(app))

            await pilot.press("d")
            await wait_for(pilot, lambda: any(j.finished for j in app.model.jobs.values()), 60, "the failure")
            job = next(iter(app.model.jobs.values()))
            assert job.state == "failed" and job.error_type == "RepoNotFoundError", job
            assert job.error.endswith(" — or switch to ModelScope (s in Models) and download again")
            await pilot.pause()
            assert f"download failed: {job.error}" in _detail(app)
            assert any("or switch to ModelScope" in n for n in notifications(app))

            # now the hub has it: the next download comes from the endpoint set in the pane
            hub.add_folder("THUDM/glm-edge-1.5b-chat", build_tiny_model(tmp_path_factory.mktemp("mirror-src")))
            hub.clear_log()
            await pilot.press("d")
            await wait_for(pilot, lambda: any(j.state == "done" for j in app.model.jobs.values()), 120,
                           "the download from the endpoint")
            assert hub.file_requests() and next(iter(app.model.jobs.values())).source == "hf"

            # empty: back to the public hub, the key removed from config.toml
            await _set_endpoint(pilot, app, "")
            assert "hf_endpoint" not in read_table(config, "hub")
            await _highlight(pilot, app, "cat:chatglm3-6b")
            assert "downloads from Hugging Face https://huggingface.co (s source" in _detail(app)

            # a variable wins over the file, and the pane and the dialog say so
            monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
            app.models_pane.refresh_detail()
            assert "downloads from Hugging Face https://hf-mirror.example (HF_ENDPOINT)" in _detail(app)
            await pilot.press("e")
            await wait_for(pilot, lambda: isinstance(app.screen, EndpointModal), 10, "the endpoint dialog")
            note = app.screen.query_one("#endpoint-note").content.plain
            assert "HF_ENDPOINT=https://hf-mirror.example is set in the environment and wins" in note
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, EndpointModal)

            # ModelScope's endpoint is its own
            monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
            await pilot.press("s")
            await pilot.pause()
            assert f"downloads from ModelScope {hub.url} (MODELSCOPE_ENDPOINT)" in _detail(app)


async def _set_endpoint_value(pilot, app, value: str) -> None:
    """Type into the dialog that is already open."""
    field = app.screen.query_one("#endpoint", Input)
    field.value = value
    await pilot.press("enter")
    await pilot.pause()


async def test_the_endpoint_key_is_listed_in_the_palette(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=SIZE):
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert "[e in Models]" in commands["Download endpoint"]
