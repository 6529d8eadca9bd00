"""The key footer, updated in place when only which keys are enabled changes.

Textual's Footer recomposes itself (unmounts and mounts every FooterKey, with
style matching for each) whenever the screen's bindings change. glmtui enables
and disables keys (Esc Stop, Ctrl+R Regenerate, ...) at the start and end of
every reply — exactly when the worker is prefilling or finishing — and that
recompose was the largest fixed UI cost of a reply (bench/bench_stream.py).
Here, when the keys shown and their order are the same, only each key's
disabled state is set; anything else falls back to the full recompose.
"""

from __future__ import annotations

from textual.widgets import Footer
from textual.widgets._footer import FooterKey


class QuickFooter(Footer):
    """A Footer that toggles keys in place when only their enabled state changed."""

    def bindings_changed(self, screen) -> None:
        if self._bindings_ready and self.is_attached and screen is self.screen and screen.app.app_focus:
            if self._update_in_place():
                return
        super().bindings_changed(screen)

    def _wanted(self) -> list[tuple[str, str, str, bool]]:
        """(key, action, description, enabled) per shown action, as Footer.compose lays them out."""
        wanted: dict[str, tuple[str, str, str, bool]] = {}
        for _node, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if binding.show and binding.group is None and binding.action not in wanted:
                wanted[binding.action] = (binding.key, binding.action, binding.description, bool(enabled))
        return list(wanted.values())

    def _update_in_place(self) -> bool:
        keys = [child for child in self.children if isinstance(child, FooterKey)]
        if len(keys) != len(self.children):  # key groups or labels: let Footer rebuild
            return False
        plain = [k for k in keys if not k.has_class("-command-palette")]
        wanted = self._wanted()
        if [(k.key, k.action, k.description) for k in plain] != [w[:3] for w in wanted]:
            return False
        for widget in keys:  # the palette key's enabled state is not expected to change: rebuild if it does
            if widget.has_class("-command-palette"):
                entry = self.screen.active_bindings.get(self.app.COMMAND_PALETTE_BINDING)
                if entry is None or widget._disabled == bool(entry[2]):
                    return False
        with self.app.batch_update():
            for widget, (_key, _action, _description, enabled) in zip(plain, wanted):
                if widget._disabled != (not enabled):
                    widget._disabled = not enabled  # read by FooterKey.on_mouse_down
                    widget.set_class(not enabled, "-disabled")
        return True
