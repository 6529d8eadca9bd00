"""A streamed reply's growing paragraph lays the screen out only when its height changes, and what is
painted stays what a full render of the same text shows."""

from __future__ import annotations

import pytest
from textual.app import App
from textual.containers import VerticalScroll

from glmtui.ui.reply_markdown import ReplyMarkdown
from glmtui.ui.streamed_paragraph import StreamedParagraph
from helpers import count_layouts

WORDS = [f"word{i}" for i in range(90)]  # ~8 lines at 80 columns


class ReplyApp(App):
    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.text = text

    def compose(self):
        with VerticalScroll():
            yield ReplyMarkdown(self.text)


def painted(app) -> list[str]:
    strips = app.screen._compositor.render_strips()
    return ["".join(segment.text for segment in strip).rstrip() for strip in strips]


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
async def test_a_growing_paragraph_lays_out_only_when_its_height_changes():
    assert ReplyMarkdown.BLOCKS["paragraph_open"] is StreamedParagraph
    app = ReplyApp()
    async with app.run_test(size=(80, 30)) as pilot:
        markdown = app.query_one(ReplyMarkdown)
        await markdown.append("A first paragraph.\n\n")
        await pilot.pause()
        layouts = count_layouts(app.screen)
        frames = 0
        for word in WORDS:  # a frame's worth of text each time (a few tokens)
            await markdown.append(word + " ")
            await pilot.pause()
            frames += 1
            paragraph = markdown.children[-1]
            assert isinstance(paragraph, StreamedParagraph)
            # laid out at exactly the height its text needs: nothing clipped, no blank line left over
            width = paragraph.content_size.width
            assert paragraph.size.height == paragraph.get_content_height(paragraph.size, app.size, width)
        lines = painted(app)
        # a new line every ~11 frames; Textual lays out twice for each (the size, then the virtual size)
        assert len(layouts) < frames / 3, f"{len(layouts)} layouts for {frames} frames"
        assert "word89" in "\n".join(lines)

    full = ReplyApp(markdown.source)  # the same text rendered at once
    async with full.run_test(size=(80, 30)) as pilot:
        await pilot.pause()
        assert painted(full) == lines
