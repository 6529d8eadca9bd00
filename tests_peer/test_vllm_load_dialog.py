"""The TUI's load dialog against a real vLLM (CPU build): vLLM chosen there serves the model, a reply
streams from it, unloading stops its server (`bash dev.sh test-peer`)."""

from __future__ import annotations

import asyncio

from textual.widgets import RadioButton

from glmtui.engine.managed import ManagedServer
from glmtui.ui.app import GlmApp
from helpers import FrozenSampler, host_only_snapshot, send, wait_for


def test_a_model_loaded_on_vllm_from_the_dialog_chats_and_unloads(peer_python, peer_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path))
    config = tmp_path / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[vllm]\npython = "{peer_python}"\nmax_model_len = 2048\n')
    monkeypatch.setattr(GlmApp, "LOCAL_ENGINE", "thread")

    async def main() -> None:
        app = GlmApp(mode="bf16", device="cpu", default_params={"temperature": 0.0, "max_new_tokens": 16},
                     sampler=FrozenSampler(host_only_snapshot()))
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("ctrl+l")
            dialog = app.screen
            await wait_for(pilot, lambda: dialog.query_one("#engine-row").display, timeout=60, what="vLLM offered")
            dialog.query_one("#engine-vllm", RadioButton).value = True
            dialog.query_one("#spec").value = str(peer_model)
            dialog.query_one("#spec").focus()
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.loaded is not None or app.model.last_error, timeout=600,
                           what="vLLM serving the model")
            assert app.loaded is not None, app.model.last_error
            server = app.engine.current
            assert isinstance(server, ManagedServer) and any("served by vllm" in n for n in app.loaded.notes)
            reply = await send(pilot, app, "hello")
            assert reply.status == "complete" and reply.text
            app.action_unload()
            await wait_for(pilot, lambda: app.loaded is None and not server.server_pids(), timeout=60,
                           what="the server stopped")

    asyncio.run(main())
