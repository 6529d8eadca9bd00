"""The paragraph block of a reply's Markdown: a streamed frame that leaves its height as it was lays nothing out.

Every frame of a streaming reply re-renders its last block; for a paragraph Textual does that with
``Static.update``, which asks for a layout of the whole screen (every displayed widget arranged
again) even when the paragraph still wraps into as many lines as before, which is most frames: a
frame's words usually end on the paragraph's last line. Here the new text is painted in place and a
layout is asked for only when the height the paragraph needs differs from the height it has.
"""

from __future__ import annotations

from textual.visual import VisualType

from .compat import MarkdownParagraph


class StreamedParagraph(MarkdownParagraph):
    """A MarkdownParagraph whose updates lay out only when its height changes."""

    layouts_skipped = 0  # updates painted in place, over all instances (tests count them)

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        width = self.content_size.width
        if not layout or not self.is_mounted or width <= 0:
            super().update(content, layout=layout)
            return
        height = self.size.height  # what the last layout gave it
        super().update(content, layout=False)
        if self.get_content_height(self.size, self.app.size, width) != height:
            self.refresh(layout=True)
        else:
            StreamedParagraph.layouts_skipped += 1
