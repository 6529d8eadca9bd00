"""Every use of Textual's private API, in one place (Textual is pinned to the minor series tested).

Each name says what glmtui relies on and why the public API does not do it; tests/test_textual_compat.py
checks each against the installed Textual, and fails (with the name) when an upgrade changed one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

# Footer's key widget: no public name (QuickFooter composes and queries them; app.tcss styles them)
from textual.widgets._footer import FooterKey

if TYPE_CHECKING:  # pragma: no cover
    from markdown_it.token import Token
    from textual import events
    from textual.app import App
    from textual.driver import Driver
    from textual.geometry import Size
    from textual.message import Message
    from textual.widgets import Footer, Markdown
    from textual.widgets._markdown import MarkdownParagraph, MarkdownTable
    from textual.widgets.markdown import MarkdownBlock

__all__ = [
    "FooterKey", "MarkdownParagraph", "MarkdownTable", "block_builder", "footer_bindings_ready", "footer_key_disabled",
    "set_footer_key_disabled", "propagation_stopped", "run_focused_bindings", "app_driver",
    "set_mouse_reporting", "notification_count", "WrapsDefaultKeys", "LayoutSizeHook", "paint_updated_lines_only",
]


def __getattr__(name: str) -> type:
    """The table and paragraph blocks: textual.widgets.markdown re-exports MarkdownBlock but not them.
    Imported when first asked for: Markdown (with markdown-it) is not needed for the first frame."""
    if name in ("MarkdownParagraph", "MarkdownTable"):
        from textual.widgets import _markdown

        return getattr(_markdown, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def block_builder(markdown: Markdown) -> Callable[[Iterable[Token]], Iterable[MarkdownBlock]]:
    """The function Markdown.update builds its blocks with, from markdown-it tokens."""
    # Markdown._parse_markdown: public update/append take text only; complete_stream rebuilds some blocks.
    return markdown._parse_markdown


def footer_bindings_ready(footer: Footer) -> bool:
    """Whether the Footer has been told the screen's bindings (it composes nothing before)."""
    # Footer._bindings_ready: QuickFooter.compose follows Footer.compose's own rule; no public flag.
    return bool(footer._bindings_ready)


def footer_key_disabled(key: FooterKey) -> bool:
    """Whether a click on the footer key is ignored (its binding is disabled)."""
    # FooterKey._disabled: the flag FooterKey.on_mouse_down reads; set only by its constructor.
    return bool(key._disabled)


def set_footer_key_disabled(key: FooterKey, disabled: bool) -> None:
    """Enable or disable a footer key in place (QuickFooter's toggle without a recompose)."""
    # FooterKey._disabled, as above; the "-disabled" class (the looks) is set by the caller.
    key._disabled = disabled


def propagation_stopped(message: Message) -> bool:
    """Whether a handler called ``message.stop()``."""
    # Message._stop_propagation: Message has stop() but no public way to read it back.
    return bool(message._stop_propagation)


async def run_focused_bindings(app: App, key: str) -> bool:
    """Run the non-priority binding of ``key`` on the focused widget's chain, as the App does for a
    key nobody handled; True when one ran."""
    # App._check_bindings: the App's own key dispatch; public simulate_key/press re-queue the key
    # behind keys typed later (ChatInput runs the binding in place, in the order typed).
    return await app._check_bindings(key)


def app_driver(app: App) -> Driver | None:
    """The running app's driver (None before it starts)."""
    # App._driver: Textual 8 has no public accessor.
    return app._driver


def set_mouse_reporting(driver: Driver, on: bool) -> None:
    """Tell the terminal to report the mouse again, or to stop; nothing where the driver has no such switch."""
    # Driver._enable/_disable_mouse_support: the escapes the driver writes at start and stop; there is
    # no public way to switch mouse reporting while the app runs.
    method = getattr(driver, "_enable_mouse_support" if on else "_disable_mouse_support", None)
    if method is not None:
        method()


def notification_count(app: App) -> int:
    """How many notifications (toasts) are showing."""
    # App._notifications: the public API adds (notify) and clears them but does not count them.
    return len(app._notifications)


class WrapsDefaultKeys:
    """Mixin, before TextArea/Input in the bases: the widget handles a key in ``process_key``, which
    calls ``default_key`` for the base's own handling (typing) where it wants it, and can act after it."""

    # Widget/TextArea._on_key: TextArea inserts typed text in this private handler; a public on_key
    # runs before it, so it cannot see whether the text area took the key.
    async def _on_key(self, event: events.Key) -> None:
        await self.process_key(event)

    async def process_key(self, event: events.Key) -> None:
        await self.default_key(event)

    async def default_key(self, event: events.Key) -> None:
        await super()._on_key(event)  # type: ignore[misc]  # Textual's private handler (tested)


class LayoutSizeHook:
    """Mixin, before a Widget class in the bases: ``layout_virtual_size`` chooses the virtual size kept
    when a layout hands the widget its sizes (the default keeps what the layout offers)."""

    # Widget._size_updated(size, virtual_size, container_size, layout): called by every layout; the
    # public Resize event comes after the offered virtual size was applied.
    def _size_updated(self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True) -> bool:
        virtual_size = self.layout_virtual_size(size, virtual_size, container_size)
        return super()._size_updated(size, virtual_size, container_size, layout)  # type: ignore[misc]  # Textual's private method (tested)

    def layout_virtual_size(self, size: Size, virtual_size: Size, container_size: Size) -> Size:
        return virtual_size


def paint_updated_lines_only() -> None:
    """Make a partial repaint render only the screen lines it updates (every screen; idempotent).

    Textual's partial repaint (a streamed frame, the meter's tick, the cursor's blink) renders every
    widget whose container overlaps the updated region, all of the widget's visible lines (the screen's
    40, each pane's, the footer's...), and then keeps only the updated lines; here each widget renders
    the updated lines only. What is painted is the same: the lines of a widget do not depend on each
    other, and lines outside the update were thrown away anyway (tests/ui/test_textual_compat.py)."""
    from textual._compositor import Compositor
    from textual.geometry import Region

    # Compositor._get_renders(crop): the renders a repaint cuts into the screen's lines; only the
    # lines of ``crop`` are kept (render_partial_update). Cropping horizontally too would shift the
    # cuts of a line, so whole widget lines are rendered.
    original = Compositor._get_renders
    if getattr(original, "glmtui_lines_only", False):
        return

    def _get_renders(self: Compositor, crop: Region | None = None):
        if crop is None:
            yield from original(self, crop)
            return
        top, bottom = crop.y, crop.bottom
        overlaps = crop.overlaps
        for widget, (region, clip) in self.visible_widgets.items():
            if not overlaps(clip):
                continue
            x0, x1 = max(region.x, clip.x), min(region.right, clip.right)
            y0, y1 = max(region.y, clip.y, top), min(region.bottom, clip.bottom, bottom)
            if x1 > x0 and y1 > y0:
                lines = widget.render_lines(Region(x0 - region.x, y0 - region.y, x1 - x0, y1 - y0))
                yield region, Region(clip.x, y0, clip.width, y1 - y0), lines

    _get_renders.glmtui_lines_only = True  # type: ignore[attr-defined]  # a mark on our function: installed
    _get_renders.textual_get_renders = original  # type: ignore[attr-defined]  # Textual's own: the tests compare
    Compositor._get_renders = _get_renders  # type: ignore[method-assign]  # the one repaint path, every screen
