"""The history pane: saved conversations, and full-text search over them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from .lists import SteadyOptionList

if TYPE_CHECKING:  # pragma: no cover
    from .app import GlmApp

LIST_LIMIT = 500
SEARCH_LIMIT = 100
COMPLETION_MARK = "✎ "  # before a completion's title
MARKS = ("\x01", "\x02")  # snippet highlight marks (never in stored text shown here)


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

    def action_cursor_up(self) -> None:
        """Up from the first row goes back to the search box (Down came from there)."""
        if self.highlighted in (None, 0) and isinstance(self.parent, HistoryPane):
            search = self.parent.search_input
            search.screen.set_focus(search)
            return
        super().action_cursor_up()


class HistoryPane(Vertical):
    """Conversation list with a search box on top."""

    app: "GlmApp"

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
        self.border_title = "History"

    def compose(self) -> Iterable:
        yield Input(placeholder="Search history (Ctrl+F)", id="search")
        yield ConversationList(id="conversations")
        yield Static(id="history-info")

    def on_mount(self) -> None:
        self.reload()

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

    def reload(self) -> None:
        """Re-read the list (or re-run the search) from the store."""
        store = self.app.store
        ol = self.option_list
        keep = self.highlighted_id()
        options: list[Option] = []
        if self.query_text.strip():
            hits = self.app.db(store.search, self.query_text, SEARCH_LIMIT, marks=MARKS) or []
            seen: set[tuple[int, Optional[int]]] = set()
            for hit in hits:
                key = (hit.conversation_id, hit.message_id)
                if key in seen:
                    continue
                seen.add(key)
                prompt = Text(hit.title or "Untitled", style="bold")
                prompt.append("\n")
                role = f"{hit.role}: " if hit.role else "title: "
                prompt.append(role, style="dim")
                prompt.append_text(snippet_text(hit.snippet))
                options.append(Option(prompt, id=f"hit{len(options)}:{hit.conversation_id}"))
            info = f"{len(options)} match{'es' if len(options) != 1 else ''} for “{self.query_text.strip()}”"
        else:
            conversations = self.app.db(store.list_conversations, LIST_LIMIT) or []
            for conv in conversations:
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
        shown = (info, [(option.id, str(option.prompt)) for option in options])
        if shown == self._shown:
            return  # unchanged (a reply in the current conversation): rebuilding 500 rows costs 30-70 ms
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
        self.action_results()

    def action_results(self) -> None:
        """Run the typed search now (not after the debounce) and move into its results."""
        if self._debounce is not None:
            self._debounce.stop()
            self._debounce = None
        self.query_text = self.search_input.value  # typed keys may be ahead of their Changed messages
        self.reload()
        ol = self.option_list
        if ol.option_count:
            ol.highlighted = 0  # the best match
            ol.screen.set_focus(ol)  # at once: Enter typed right after opens it

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id:
            self.post_message(self.Open(int(event.option.id.split(":", 1)[1])))
