"""The paragraph block of a reply's Markdown: a streamed frame that leaves its height as it was lays nothing out.

Every frame of a streaming reply re-renders its last block; for a paragraph Textual does that with
``Static.update``, which asks for a layout of the whole screen even when the paragraph still wraps
into as many lines as before, which is most frames: a frame's words usually end on the paragraph's
last line. Here (steady.KeepsHeight) the new text is painted in place and a layout is asked for only
when the height the paragraph needs differs from the height it has.
"""

from __future__ import annotations

from .compat import MarkdownParagraph
from .steady import KeepsHeight


class StreamedParagraph(KeepsHeight, MarkdownParagraph):
    """A MarkdownParagraph whose updates lay out only when its height changes."""
