"""OptionList that keeps its own scroll height across screen layouts."""

from __future__ import annotations

from textual.geometry import Size
from textual.widgets import OptionList

from .compat import LayoutSizeHook


class SteadyOptionList(LayoutSizeHook, OptionList):
    """An OptionList that is not re-rendered by layouts that leave it unchanged.

    In Textual 8.2 every screen layout hands an OptionList its region's height as
    its virtual (scrollable) size, and the list then sets its own (one line per
    row): the two differ whenever the list overflows, so each layout — ten or
    more a second while a reply streams — refreshed its scrollbar and rows
    (~2 ms a frame with 100 conversations). When neither its size nor its
    container changed, the list's own virtual size is kept.
    """

    def layout_virtual_size(self, size: Size, virtual_size: Size, container_size: Size) -> Size:
        same_width = self.virtual_size.width == virtual_size.width
        if size == self.outer_size and container_size == self.container_size and same_width:
            return self.virtual_size
        return virtual_size
