"""The key footer: the keys that fit the width, by priority, updated in place.

Width: Textual's Footer lays every key out in one scrolling row and cuts the
row at the terminal's edge (at 100 columns "^f Sea▏", and at 80 Ctrl+L, F8
and F9 were never seen). Here every key is shown whole or not at all: when
they do not all fit, descriptions are abbreviated (SHORT) and the keys are
kept in PRIORITY order until the width is used; they stay in their usual
order on screen, and the palette key (Ctrl+P lists every command with its
key) stays on the right.

Speed: Textual's Footer recomposes itself (unmounts and mounts every
FooterKey, with style matching for each) whenever the screen's bindings
change. glmtui enables and disables keys (Esc Stop, Ctrl+R Regenerate, ...)
at the start and end of every reply — exactly when the worker is prefilling
or finishing — and that recompose was the largest fixed UI cost of a reply
(bench/bench_stream.py). When the keys shown and their order are the same,
only each key's disabled state is set; anything else falls back to the full
recompose.
"""

from __future__ import annotations

from typing import NamedTuple

from rich.cells import cell_len
from textual.widgets import Footer

from .compat import FooterKey, footer_bindings_ready, footer_key_disabled, set_footer_key_disabled

# Kept first when not every key fits (actions, "app." dropped); the focused widget's own keys
# (Send, Load, Download) lead. Actions not listed come after these, in their usual order.
PRIORITY = (
    "submit", "select", "stop", "download_model", "next_pane", "load", "quantization", "unload", "quit",
    "toggle_download_source", "cancel_download", "new_chat", "search", "regenerate", "edit_last",
    "settings", "answer", "save", "cancel",
)
# Shorter descriptions, used when the full ones do not all fit
SHORT = {
    "Regenerate": "Regen",
    "New chat": "New",
    "Edit last": "Edit",
    "Cancel download": "Cancel",
}


class Key(NamedTuple):
    key: str
    display: str
    action: str
    description: str
    enabled: bool
    tooltip: str


def _rank(action: str) -> int:
    name = action.removeprefix("app.").split("(", 1)[0]
    return PRIORITY.index(name) if name in PRIORITY else len(PRIORITY)


def key_width(display: str, description: str) -> int:
    """Cells a compact FooterKey takes: key, space, description, and its 1-cell right margin."""
    return cell_len(display) + (1 + cell_len(description) if description else 0) + 1


def fit_keys(keys: list[Key], width: int) -> list[Key]:
    """The keys that fit in ``width`` cells, in their original order: all of them in full if
    they fit; else the abbreviated ones in priority order while they fit, and then, still
    in priority order, their full descriptions back where the room left allows."""
    if sum(key_width(k.display, k.description) for k in keys) <= width:
        return keys
    short = [k._replace(description=SHORT.get(k.description, k.description)) for k in keys]
    order = sorted(range(len(short)), key=lambda i: (_rank(short[i].action), i))
    kept: set[int] = set()
    used = 0
    for index in order:
        cells = key_width(short[index].display, short[index].description)
        if used + cells <= width:
            kept.add(index)
            used += cells
    for index in (i for i in order if i in kept and short[i].description != keys[i].description):
        long_key, short_key = keys[index], short[index]
        extra = key_width(long_key.display, long_key.description) - key_width(short_key.display, short_key.description)
        if used + extra <= width:
            short[index] = keys[index]
            used += extra
    return [k for i, k in enumerate(short) if i in kept]


class QuickFooter(Footer):
    """A Footer that shows only whole keys, by priority, and toggles them in place."""

    def _candidates(self) -> list[Key]:
        """One key per shown action, as Footer.compose lays them out."""
        keys: dict[str, Key] = {}
        for _node, binding, enabled, tooltip in self.screen.active_bindings.values():
            if binding.show and binding.group is None and binding.action not in keys:
                keys[binding.action] = Key(binding.key, self.app.get_key_display(binding), binding.action,
                                           binding.description, bool(enabled), tooltip)
        return list(keys.values())

    def _palette_width(self) -> int:
        """The palette key on the right: border (1), key, space, description, padding (1)."""
        if not (self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE):
            return 0
        entry = self.screen.active_bindings.get(self.app.COMMAND_PALETTE_BINDING)
        if entry is None:
            return 0
        binding = entry[1]
        return 2 + cell_len(self.app.get_key_display(binding)) + 1 + cell_len(binding.description)

    def _wanted(self) -> list[Key]:
        """The keys shown at this width."""
        width = self.size.width or self.app.size.width
        return fit_keys(self._candidates(), width - self._palette_width())

    def compose(self):
        if not footer_bindings_ready(self):
            return
        for key in self._wanted():
            yield FooterKey(key.key, key.display, key.description, key.action, disabled=not key.enabled,
                            tooltip=key.tooltip).data_bind(compact=Footer.compact)
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            entry = self.screen.active_bindings.get(self.app.COMMAND_PALETTE_BINDING)
            if entry is not None:
                _node, binding, enabled, tooltip = entry
                yield FooterKey(binding.key, self.app.get_key_display(binding), binding.description, binding.action,
                                classes="-command-palette", disabled=not enabled,
                                tooltip=binding.tooltip or binding.description)

    def on_resize(self) -> None:
        """Another width may fit other keys."""
        if footer_bindings_ready(self) and self.is_attached and not self._shows(self._wanted()):
            self.call_after_refresh(self.recompose)

    def _shows(self, wanted: list[Key]) -> bool:
        plain = [k for k in self.children if isinstance(k, FooterKey) and not k.has_class("-command-palette")]
        return [(k.key, k.action, k.description) for k in plain] == [(w.key, w.action, w.description) for w in wanted]

    def bindings_changed(self, screen) -> None:
        if footer_bindings_ready(self) and self.is_attached and screen is self.screen and screen.app.app_focus:
            if self._update_in_place():
                return
        super().bindings_changed(screen)

    async def recompose(self) -> None:
        """Rebuild the keys, unless those wanted are already shown (then only their enabled state is set).

        Footer asks for one recompose per bindings change and per resize; at start several arrive together
        (3 full rebuilds before the first frame showed any key): the first builds the keys, the rest find
        them in place."""
        if self.is_attached and footer_bindings_ready(self) and self.children and self._palette_as_wanted() \
                and self._update_in_place():
            return
        await super().recompose()

    def _palette_as_wanted(self) -> bool:
        """Whether the palette key is shown exactly when it should be."""
        shown = any(isinstance(k, FooterKey) and k.has_class("-command-palette") for k in self.children)
        wanted = bool(self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE
                      and self.screen.active_bindings.get(self.app.COMMAND_PALETTE_BINDING) is not None)
        return shown == wanted

    def _update_in_place(self) -> bool:
        keys = [child for child in self.children if isinstance(child, FooterKey)]
        if len(keys) != len(self.children):  # labels: let Footer rebuild
            return False
        plain = [k for k in keys if not k.has_class("-command-palette")]
        wanted = self._wanted()
        if not self._shows(wanted):
            return False
        for widget in keys:  # the palette key's enabled state is not expected to change: rebuild if it does
            if widget.has_class("-command-palette"):
                entry = self.screen.active_bindings.get(self.app.COMMAND_PALETTE_BINDING)
                if entry is None or footer_key_disabled(widget) == bool(entry[2]):
                    return False
        with self.app.batch_update():
            for widget, key in zip(plain, wanted, strict=True):  # _shows: the same keys
                if footer_key_disabled(widget) != (not key.enabled):
                    set_footer_key_disabled(widget, not key.enabled)  # read by FooterKey.on_mouse_down
                    widget.set_class(not key.enabled, "-disabled")
        return True
