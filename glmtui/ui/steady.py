"""Text widgets whose updates lay out only when the height they need changes.

Textual's ``Static.update`` asks for a layout of the whole screen (every displayed widget arranged
again, the changed regions repainted) even when the new text wraps into as many lines as before.
A streamed reply's paragraph does that on most frames and the monitor on every sample; here the new
text is painted in place, and a layout is asked for only when the height needed differs from the
height the last layout gave (or the widget has none yet).
"""

from __future__ import annotations

from textual.visual import VisualType
from textual.widgets import Static


class KeepsHeight:
    """Mixin, before a Static class in the bases: ``update`` lays out only when the height changes."""

    layouts_skipped = 0  # updates painted in place, over all instances (tests count them)

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        widget: Static = self  # type: ignore[assignment]  # the mixin is only ever mixed into a Static
        width = widget.content_size.width
        if not layout or not widget.is_mounted or width <= 0:
            super().update(content, layout=layout)  # type: ignore[misc]  # Static.update
            return
        height = widget.content_size.height  # what the last layout gave it
        super().update(content, layout=False)  # type: ignore[misc]  # Static.update
        if widget.get_content_height(widget.size, widget.app.size, width) != height:
            widget.refresh(layout=True)
        else:
            KeepsHeight.layouts_skipped += 1


class SteadyStatic(KeepsHeight, Static):
    """A Static whose updates lay out only when its height changes."""
