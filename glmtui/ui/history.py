"""The history pane: saved conversations, and full-text search over them.

The list is read off the UI thread (ui/store_calls.py); the newest reload wins, an older one's rows are dropped.
A completion (completion mode's text) has ✎ before its title, in the list and in search results.
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol, cast

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from glmtui.store import HistoryStore

from .lists import SteadyOptionList
from .store_calls import store_calls


class HistoryHost(Protocol):
    """What the pane asks of its app (never imported from app.py: no import circle)."""

    store: HistoryStore


LIST_LIMIT = 500
SEARCH_LIMIT = 100
COMPLETION_MARK = "✎ "  # before a completion's title
MARKS = ("\x01", "\x02")  # snippet highlight marks (never in stored text shown here)
_SUPERSEDED = object()  # a reload overtaken by a newer one before it ran


def snippet_text(snippet: str) -> Text:
    """A search snippet with its marked matches highlighted."""
    out = Text()
    rest = snippet
    while rest:
        start = rest.find(MARKS[0])
        if start < 0:
            out.append(rest)
            break
        out.append(rest[:start])
        end = rest.find(MARKS[1], start + 1)
        if end < 0:
            out.append(rest[start + 1:], style="bold reverse")
            break
        out.append(rest[start + 1:end], style="bold reverse")
        rest = rest[end + 1:]
    return out


class ConversationList(SteadyOptionList):
    BINDINGS = [
        Binding("enter", "select", "Open", show=False),
        Binding("delete", "app.delete_conversation", "Delete", show=False),
    ]

    def action_select(self) -> None:
        """Enter while a search is still being read opens its best match once it arrives."""
        pane = self.parent
        if isinstance(pane, HistoryPane) and pane.results_pending:
            pane.open_first = True
            return
        super().action_select()

    def action_cursor_up(self) -> None:
        """Up from the first row goes back to the search box (Down came from there)."""
        if self.highlighted in (None, 0) and isinstance(self.parent, HistoryPane):
            search = self.parent.search_input
            search.screen.set_focus(search)
            return
        super().action_cursor_up()


class HistoryPane(Vertical):
    """Conversation list with a search box on top."""

    # Down in the search box moves into the results (Up from the first result comes back)
    BINDINGS = [Binding("down", "results", "Results", show=False)]

    class Open(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.query_text = ""
        self.current_id: Optional[int] = None
        self._debounce: Optional[Timer] = None
        self._shown: Optional[tuple] = None  # what the list shows: a reload that would show the same skips the rebuild
        self._reloads = 0  # reloads asked for; only the newest one's rows are shown
        self._titles: dict[int, str] = {}  # the titles shown, by conversation id (the rename/delete dialogs')
        self.results_pending = False  # the search box asked to move into results still being read
        self.open_first = False  # ... and Enter was typed meanwhile: open the best match
        self.border_title = "History"

    def compose(self) -> Iterable:
        yield Input(placeholder="Search history (Ctrl+F)", id="search")
        yield ConversationList(id="conversations")
        yield Static(id="history-info")

    def on_mount(self) -> None:
        # the rows (500 options built) a frame later: the first frame does not wait for them
        self.call_after_refresh(self.reload)

    def on_unmount(self) -> None:
        # The app closes the store once its panes are gone: the saves still queued land first.
        store_calls(self.app).flush(timeout=5.0)

    @property
    def option_list(self) -> ConversationList:
        return self.query_one("#conversations", ConversationList)

    @property
    def search_input(self) -> Input:
        return self.query_one("#search", Input)

    def highlighted_id(self) -> Optional[int]:
        ol = self.option_list
        if ol.highlighted is None or ol.option_count == 0:
            return None
        option = ol.get_option_at_index(ol.highlighted)
        return int(option.id.split(":", 1)[1]) if option.id else None

    def title_of(self, conversation_id: int) -> Optional[str]:
        """The conversation's title as the list (or the search's results) shows it; None if not shown."""
        return self._titles.get(conversation_id)

    def reload(self) -> None:
        """Re-read the list (or re-run the search) from the store, on the store's worker thread."""
        self._reloads += 1
        seq, query, store = self._reloads, self.query_text, cast(HistoryHost, self.app).store

        def read() -> object:
            if seq != self._reloads:
                return _SUPERSEDED
            if query.strip():
                hits = store.search(query, SEARCH_LIMIT, marks=MARKS)
                found = {hit.conversation_id for hit in hits}  # a hit has no kind: the completions among them
                return hits, {cid for cid in found if getattr(store.get_conversation(cid), "kind", "") == "completion"}
            return store.list_conversations(LIST_LIMIT)

        future = store_calls(self.app).call(read)
        future.add_done_callback(lambda done: self._show_rows(seq, query, done))

    def _show_rows(self, seq: int, query: str, done) -> None:
        if seq != self._reloads or done.cancelled():
            return  # a newer reload is on its way
        rows = done.result()  # store errors were shown and came back as None; anything else is raised here
        if rows is _SUPERSEDED or not self.is_attached:
            return
        store = cast(HistoryHost, self.app).store
        keep = self.highlighted_id()
        options: list[Option] = []
        titles: dict[int, str] = {}
        if query.strip():
            hits, completions = rows or ([], set())
            seen: set[tuple[int, Optional[int]]] = set()
            for hit in hits:
                key = (hit.conversation_id, hit.message_id)
                if key in seen:
                    continue
                seen.add(key)
                titles[hit.conversation_id] = hit.title
                prompt = Text(style="bold")
                if hit.conversation_id in completions:
                    prompt.append(COMPLETION_MARK, style="dim")
                prompt.append(hit.title or "Untitled")
                prompt.append("\n")
                role = f"{hit.role}: " if hit.role else "title: "
                prompt.append(role, style="dim")
                prompt.append_text(snippet_text(hit.snippet))
                options.append(Option(prompt, id=f"hit{len(options)}:{hit.conversation_id}"))
            info = f"{len(options)} match{'es' if len(options) != 1 else ''} for “{query.strip()}”"
        else:
            conversations = rows or []
            for conv in conversations:
                titles[conv.id] = conv.title
                marker = "● " if conv.id == self.current_id else "  "
                prompt = Text(marker, style="bold")
                if conv.kind == "completion":  # completion mode's text, opened in the completion view
                    prompt.append(COMPLETION_MARK, style="dim")
                prompt.append(conv.title or "Untitled")
                options.append(Option(prompt, id=f"conv:{conv.id}"))
            total = len(conversations)
            info = f"{total} conversation{'s' if total != 1 else ''}"
            if store.in_memory:
                info += " · in memory only"
        self._titles = titles
        shown = (info, [(option.id, str(option.prompt)) for option in options])
        if shown != self._shown:  # unchanged (a reply in the current conversation): rebuilding 500 rows costs 30-70 ms
            self._rebuild(shown, options, keep, info)
        if self.results_pending:
            self._enter_results()

    def _rebuild(self, shown: tuple, options: list[Option], keep: Optional[int], info: str) -> None:
        ol = self.option_list
        self._shown = shown
        ol.clear_options()
        ol.add_options(options)
        if options:
            index = 0
            if keep is not None:
                for i, opt in enumerate(options):
                    if opt.id and opt.id.endswith(f":{keep}"):
                        index = i
                        break
            ol.highlighted = index
        self.query_one("#history-info", Static).update(Text(info, style="dim"))

    def set_current(self, conversation_id: Optional[int]) -> None:
        self.current_id = conversation_id
        self.reload()

    def focus_search(self) -> None:
        self.search_input.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.query_text = event.value
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(0.15, self.reload)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.results_pending and self.query_text == self.search_input.value:
            self.open_first = True  # Enter again before the results came: open the best match
            return
        self.action_results()

    def action_results(self) -> None:
        """Run the typed search now (not after the debounce) and move into its results once they are read."""
        if self._debounce is not None:
            self._debounce.stop()
            self._debounce = None
        self.query_text = self.search_input.value  # typed keys may be ahead of their Changed messages
        self.results_pending = True
        self.reload()

    def _enter_results(self) -> None:
        self.results_pending = False
        open_first, self.open_first = self.open_first, False
        ol = self.option_list
        if not ol.option_count:
            return
        ol.highlighted = 0  # the best match
        ol.screen.set_focus(ol)  # Enter typed right after opens it
        if open_first:
            ol.action_select()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id:
            self.post_message(self.Open(int(event.option.id.split(":", 1)[1])))
