"""The history pane marks a completion (completion mode's text) with ✎ in search results as in its list."""

from __future__ import annotations

from glmtui.config import default_paths
from glmtui.store import HistoryStore
from glmtui.ui.app import GlmApp
from glmtui.ui.history import COMPLETION_MARK
from helpers import wait_for


def _rows(history) -> dict[str, list[str]]:
    """The first line of each row shown, by conversation id."""
    rows: dict[str, list[str]] = {}
    ol = history.option_list
    for i in range(ol.option_count):
        option = ol.get_option_at_index(i)
        rows.setdefault(option.id.split(":", 1)[1], []).append(str(option.prompt).split("\n")[0])
    return rows


async def test_search_results_mark_completions_as_the_list_does(quiet_sampler):
    store = HistoryStore.open(default_paths().history_db)
    chat = store.create_conversation("tale of a chat", None)
    store.add_message(chat, "user", "once upon a tale")
    completion = store.create_conversation("tale to continue", None, kind="completion")
    store.add_message(completion, "user", "once upon a tale")
    store.close()
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        history = app.history_pane
        await wait_for(pilot, lambda: history.option_list.option_count == 2, what="the list")
        listed = _rows(history)
        assert listed[str(completion)] == ["  " + COMPLETION_MARK + "tale to continue"]
        assert listed[str(chat)] == ["  tale of a chat"]

        history.search_input.value = "tale"
        await wait_for(pilot, lambda: history.option_list.option_count
                       and history.option_list.get_option_at_index(0).id.startswith("hit"), what="the results")
        found = _rows(history)
        assert set(found) == {str(chat), str(completion)}
        assert all(line == COMPLETION_MARK + "tale to continue" for line in found[str(completion)])
        assert all(line == "tale of a chat" for line in found[str(chat)])
