"""A streamed reply's Markdown: ReplyMarkdown (arranged against the screen's height, off-screen blocks
hidden while it streams) and :func:`complete_stream`, which ends a stream with exactly what a full
``Markdown.update`` would show while re-mounting only the blocks that differ (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio
import re
from typing import Optional

from markdown_it import MarkdownIt
from textual.await_complete import AwaitComplete
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownBlock

from .compat import MarkdownTable, block_builder
from .streamed_paragraph import StreamedParagraph

_LINKISH = re.compile(r"\]\(|\]\[|://|<[^>\s]+>|www\.")


class ReplyMarkdown(Markdown):
    """The Markdown of a reply, arranged against the screen's height instead of its own.

    Every block is ``height: auto``, so the height offered to the blocks changes nothing in the
    result; but Textual arranges a container whose children are all auto-height against that height
    and caches each container's arrangement by it, and a streaming reply grows on every append: each
    frame then re-arranged every table and list of the reply (half the UI's time in a long reply).
    A fixed height keeps those caches valid."""

    BLOCKS = {**Markdown.BLOCKS, "paragraph_open": StreamedParagraph}  # a frame that keeps its height lays nothing out

    FREEZE_SCREENS = 2
    """While a reply streams, blocks ending more than this many screens above its end are hidden."""
    FREEZE_BATCH = 8
    """Hide at least this many blocks at once (each hiding is one extra layout)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._follow: Optional[Widget] = None
        self._watched: list[Widget] = []
        self._frozen: list[Widget] = []
        self._frozen_at: Optional[tuple[Size, int]] = None
        self._frozen_height = 0

    def arrange(self, size: Size, optimal: bool = False):
        return super().arrange(Size(size.width, self.screen.size.height), optimal)

    # -------------------------------------------------------------- off-screen blocks while streaming
    #
    # Every layout (one per streamed frame: the last block grows or a new one is mounted) walks every
    # displayed widget of the screen, and every paint sorts and filters them (Textual's compositor),
    # so with all ~1,150 widgets of a 10k-token reply displayed (~155 top-level blocks and their
    # items, rows, cells) a frame's cost grows with the reply. Blocks far above the end of a reply that
    # the view follows are final (the stream only ever touches the last block) and off-screen: they are
    # hidden (display: none)
    # and the Markdown's top padding grows by exactly the height they took, so everything below stays
    # where it was. Scrolling up, a resize or the end of the reply shows them again (thaw).

    def follow(self, view: Optional[Widget]) -> None:
        """Hide off-screen blocks after each append while ``view`` (the scrolling container) is at its end;
        ``None``: stop, and show them all."""
        if view is not None and view not in self._watched:
            self._watched.append(view)
            self.watch(view, "scroll_y", self._view_scrolled, init=False)
        self._follow = view
        if view is None:
            self.thaw()

    def _view_scrolled(self, scroll_y: float) -> None:
        """Scrolled up (hidden blocks are at least 1.5 screens above what is then shown): show them."""
        view = self._follow
        if self._frozen and view is not None and view.max_scroll_y - scroll_y > max(1, view.size.height // 2):
            self.thaw()

    def append(self, markdown: str) -> AwaitComplete:
        appended = super().append(markdown)
        if self._follow is None:
            return appended

        async def append_then_freeze() -> None:
            await appended
            self.freeze_offscreen()

        return AwaitComplete(append_then_freeze())

    def freeze_offscreen(self) -> int:
        """Hide the blocks that end :attr:`FREEZE_SCREENS` screens above the reply's end; returns how many."""
        view = self._follow
        if view is None or not self.is_mounted:
            return 0
        screen_size = self.screen.size
        width = self.size.width - self.styles.gutter.width
        if self._frozen and self._frozen_at != (screen_size, width):
            self.thaw()
            return 0
        if width <= 0 or view.max_scroll_y - view.scroll_y > 1:
            return 0
        placements = self.arrange(Size(width, 0)).placements
        if len(placements) <= self.FREEZE_BATCH:
            return 0
        last = placements[-1]
        limit = last.region.bottom + last.margin.bottom - self.FREEZE_SCREENS * screen_size.height
        count = 0
        while (count < len(placements) - 1
               and placements[count].region.bottom + placements[count].margin.bottom <= limit):
            count += 1
        if count < self.FREEZE_BATCH:
            return 0
        hidden = [placement.widget for placement in placements[:count]]
        if not all(isinstance(widget, MarkdownBlock) for widget in hidden):
            return 0
        first_shown = placements[count]
        height = self._frozen_height + first_shown.region.y - first_shown.margin.top
        top, right, bottom, left = self.styles.padding
        with self.app.batch_update():
            for widget in hidden:
                widget.display = False
            self.styles.padding = (top - self._frozen_height + height, right, bottom, left)
        self._frozen.extend(hidden)
        self._frozen_height = height
        self._frozen_at = (screen_size, width)
        return count

    def thaw(self) -> None:
        """Show every hidden block again."""
        if not self._frozen:
            return
        with self.app.batch_update():
            for widget in self._frozen:
                widget.display = True
            self.styles.clear_rule("padding")
        self._frozen.clear()
        self._frozen_height = 0
        self._frozen_at = None


async def complete_stream(markdown: Markdown, text: str) -> str:
    """Make a streamed ``markdown`` render ``text`` exactly as ``Markdown.update(text)`` would, without
    re-mounting what the stream already rendered right; returns how, for benchmarks ("full", or how
    many blocks were kept and rebuilt).

    A whole-document ``update`` at the end of a reply re-parses and re-mounts every block (seconds
    for a 10,000-token reply, the UI frozen). The stream's top-level blocks are final once a later
    block has started (CommonMark never reopens a closed block), so the full text is parsed once
    (cheap, off the UI thread) and the rendered top-level blocks are kept as long as their line
    ranges match the full parse; the rest - at least the last block, whatever the stream's
    incremental update left there (e.g. a paragraph that turned into an HTML block) - is rebuilt
    from the full parse. Falls back to ``update`` where a streamed render cannot be trusted: the text
    does not extend what was streamed, or it defines link references (they change earlier links).
    """
    async with markdown.lock:  # MarkdownStream.stop() can return while a shielded append still runs
        pass
    streamed = markdown.source
    if not streamed or not text.startswith(streamed):
        await markdown.update(text)
        return "full"
    if len(text) > len(streamed):
        await markdown.append(text[len(streamed):])
    env: dict = {}
    tokens = await asyncio.get_running_loop().run_in_executor(None, MarkdownIt("gfm-like").parse, text, env)
    if env.get("references"):
        await markdown.update(text)
        return "full"
    starts = [i for i, t in enumerate(tokens) if t.level == 0 and t.nesting >= 0 and t.map is not None]
    async with markdown.lock:
        blocks = [child for child in markdown.children if isinstance(child, MarkdownBlock)]
        keep = 0
        while (keep < len(blocks) - 1 and keep < len(starts)
               and tuple(blocks[keep].source_range) == tuple(tokens[starts[keep]].map or ())):
            keep += 1
        build = block_builder(markdown)  # the same builder Markdown.update uses
        rebuilt = list(build(tokens[starts[keep]:])) if keep < len(starts) else []
        lines = text.splitlines()
        # Rows a table gained while it streamed are plain Statics, whose links do not respond:
        # a kept table with links is rebuilt in place.
        relinked = [i for i in range(keep) if isinstance(blocks[i], MarkdownTable)
                    and _LINKISH.search("\n".join(lines[slice(*blocks[i].source_range)]))
                    and any(type(cell) is Static for cell in blocks[i].query(Static))]
        with markdown.app.batch_update():
            for i in relinked:
                group = tokens[starts[i]:starts[i + 1] if i + 1 < len(starts) else len(tokens)]
                await markdown.mount_all(list(build(group)), before=blocks[i])
            await markdown.remove_children([*(blocks[i] for i in relinked), *blocks[keep:]])
            if rebuilt:
                await markdown.mount_all(rebuilt)
    return f"kept {keep} of {len(blocks)} blocks, rebuilt {len(rebuilt)} + {len(relinked)} tables"
