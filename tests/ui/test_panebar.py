"""The pane bar of narrow terminals: a click on a pane's name shows that pane (the bar sets the app's
current pane through its PaneBarHost, without importing the app)."""

from __future__ import annotations

from glmtui.ui.app import GlmApp
from glmtui.ui.panebar import PaneBar
from helpers import wait_for


async def test_a_click_on_a_pane_name_shows_that_pane(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(80, 30)) as pilot:
        bar = app.query_one(PaneBar)
        await wait_for(pilot, lambda: bar.region.width > 0 and bar._spans, timeout=10, what="the pane bar shown")
        for pane in ("models", "history", "monitor", "chat"):
            start = next(start for start, _end, name in bar._spans if name == pane)
            assert await pilot.click(PaneBar, offset=(start + 1, 0))
            await wait_for(pilot, lambda pane=pane: app.current_pane == pane and bar.current == pane, timeout=10,
                           what=f"the {pane} pane shown after its name was clicked")
