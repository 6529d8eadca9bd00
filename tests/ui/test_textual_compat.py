"""glmtui.ui.compat holds every use of Textual's private API: each is checked here against the installed
Textual by doing what glmtui does with it, so an upgrade that renamed or changed one fails here, by name.
The first test keeps it that way: a private Textual name used anywhere else in glmtui fails it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import textual
from markdown_it import MarkdownIt
from textual import events
from textual.app import App
from textual.binding import Binding
from textual.containers import Vertical
from textual.drivers.linux_driver import LinuxDriver
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Footer, Markdown, TextArea
from textual.widgets.markdown import MarkdownBlock
from textual.widgets.option_list import Option

from glmtui.ui import compat
from glmtui.ui.compat import FooterKey, LayoutSizeHook, MarkdownTable, WrapsDefaultKeys
from glmtui.ui.lists import SteadyOptionList
from helpers import wait_for

PACKAGE = Path(__file__).resolve().parents[2] / "glmtui"
TEXTUAL = Path(textual.__file__).parent
NAMEDTUPLE = {"_replace", "_asdict", "_fields", "_make"}  # public API of namedtuples, underscore and all


def _textual_private_names() -> set[str]:
    """Underscore names Textual defines: methods, attributes set on self, class attributes."""
    found: set[str] = set()
    pattern = re.compile(r"def (_[a-z]\w*)|self\.(_[a-z]\w*)\s*[:=][^=]|^\s+(_[a-z]\w*)\s*[:=][^=]", re.M)
    for path in TEXTUAL.rglob("*.py"):
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            found.add(next(g for g in match.groups() if g))
    return found - NAMEDTUPLE


def _defined_by_glmtui(trees: dict[str, ast.AST]) -> set[str]:
    """Names glmtui gives values of its own (on self, module and class level, functions and methods)."""
    names: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AnnAssign, ast.AugAssign)) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id in ("self", "cls"):
                    names.add(target.attr)
                elif isinstance(target, ast.Name):
                    names.add(target.id)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return names


def _private_uses(rel: str, tree: ast.AST, textual_names: set[str], own: set[str]) -> list[str]:
    """Where ``tree`` uses Textual's private API: imports from private modules, overridden private hooks,
    attribute reads and getattr strings of Textual's underscore names that glmtui does not define itself."""
    overrides = {n for n in textual_names if n.startswith(("_on_", "_watch_", "_size_updated"))}
    own = own - overrides
    others = set()  # names bound to modules other than Textual's (os._exit is no Textual private name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                if (module or alias.name).split(".")[0] != "textual":
                    others.add((alias.asname or alias.name).split(".")[0])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "textual":
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"{rel}:{node.lineno} from {node.module} import ...")
            found += [f"{rel}:{node.lineno} from {node.module} import {alias.name}" for alias in node.names
                      if alias.name.startswith("_")]  # a private module or name of a public one
        elif isinstance(node, ast.Import):
            found += [f"{rel}:{node.lineno} import {alias.name}" for alias in node.names
                      if alias.name.split(".")[0] == "textual"
                      and any(part.startswith("_") for part in alias.name.split("."))]
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in overrides:
                    found.append(f"{rel}:{item.lineno} def {item.name}")
        elif (isinstance(node, ast.Attribute) and node.attr in textual_names and node.attr not in own
              and not (isinstance(node.value, ast.Name) and node.value.id in others)):
            found.append(f"{rel}:{node.lineno} .{node.attr}")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value in textual_names and node.value not in own):
            found.append(f"{rel}:{node.lineno} {node.value!r}")
    return found


def test_textual_private_names_are_used_only_in_compat():
    trees = {str(p.relative_to(PACKAGE.parent)): ast.parse(p.read_text(encoding="utf-8"))
             for p in sorted(PACKAGE.rglob("*.py"))}
    textual_names = _textual_private_names()
    own = _defined_by_glmtui(trees)
    found = [use for rel, tree in trees.items() if rel != "glmtui/ui/compat.py"
             for use in _private_uses(rel, tree, textual_names, own)]
    assert not found, "Textual's private API outside glmtui/ui/compat.py:\n" + "\n".join(found)
    # and compat itself is seen by the same scan (so the scan is not blind)
    assert len(_private_uses("compat", trees["glmtui/ui/compat.py"], textual_names, own)) >= 10


def test_the_guard_sees_each_kind_of_use():
    """An import from a private module (either import form) or of a private name, an overridden hook, an attribute
    read and a getattr string."""
    source = ("from textual.widgets._footer import FooterKey\n"
              "class A(TextArea):\n    async def _on_key(self, event):\n        await self.app._check_bindings('x')\n"
              "x = getattr(a, '_notifications', ())\n"
              "import textual._markdown as md, os._x\n"
              "from textual import _ansi_sequences\n")
    found = _private_uses("m.py", ast.parse(source), _textual_private_names(), set())
    assert sorted(found) == ["m.py:1 from textual.widgets._footer import ...", "m.py:3 def _on_key",
                             "m.py:4 ._check_bindings", "m.py:5 '_notifications'", "m.py:6 import textual._markdown",
                             "m.py:7 from textual import _ansi_sequences"]


# ------------------------------------------------------------------ markdown

TEXT = """# Title

Some *text* and a [link](https://example.com).

| a | b |
|---|---|
| 1 | 2 |

- one
- two

```python
print("hi")
```

Last paragraph.
"""


class MarkdownApp(App):
    def compose(self):
        yield Markdown()


async def test_block_builder_builds_what_update_mounts():
    app = MarkdownApp()
    async with app.run_test(size=(80, 40)) as pilot:
        markdown = app.query_one(Markdown)
        await markdown.update(TEXT)
        await pilot.pause()
        mounted = [(type(b), tuple(b.source_range)) for b in markdown.children]
        tokens = MarkdownIt("gfm-like").parse(TEXT)
        built = list(compat.block_builder(markdown)(tokens))
        assert [(type(b), tuple(b.source_range)) for b in built] == mounted
        assert MarkdownTable in [kind for kind, _ in mounted]  # the table block is the re-exported class
        assert issubclass(MarkdownTable, MarkdownBlock)
        assert compat.MarkdownParagraph in [kind for kind, _ in mounted]  # so is the paragraph block
        assert Markdown.BLOCKS["paragraph_open"] is compat.MarkdownParagraph
        # complete_stream builds the blocks from a slice of the tokens, starting at a top-level block
        start = next(i for i, t in enumerate(tokens) if t.type == "table_open")
        tail = list(compat.block_builder(markdown)(tokens[start:]))
        assert [(type(b), tuple(b.source_range)) for b in tail] == mounted[2:]


# ------------------------------------------------------------------ footer


class FooterApp(App):
    BINDINGS = [Binding("x", "hit", "Hit")]
    hits = 0

    def compose(self):
        yield Vertical()
        yield Footer()

    def action_hit(self) -> None:
        self.hits += 1


async def test_footer_key_flags():
    assert not compat.footer_bindings_ready(Footer())  # nothing to compose before the bindings arrive
    app = FooterApp()
    async with app.run_test(size=(80, 10)) as pilot:
        footer = app.query_one(Footer)
        await wait_for(pilot, lambda: compat.footer_bindings_ready(footer) and footer.query(FooterKey),
                       timeout=10, what="the footer's keys")
        key = next(k for k in footer.query(FooterKey) if k.action == "hit")
        assert (key.key, key.description, FooterKey.__name__) == ("x", "Hit", "FooterKey")  # app.tcss: FooterKey
        assert not compat.footer_key_disabled(key)
        compat.set_footer_key_disabled(key, True)
        assert compat.footer_key_disabled(key)
        await pilot.click(key)
        await pilot.pause()
        assert app.hits == 0, "a click on a disabled key must do nothing"
        compat.set_footer_key_disabled(key, False)
        await pilot.click(key)
        await wait_for(pilot, lambda: app.hits == 1, timeout=10, what="the click to run the key's action")
        # QuickFooter builds its own keys with Footer's arguments
        built = FooterKey("y", "Y", "Why", "why", disabled=True, tooltip="tip", classes="-command-palette")
        assert compat.footer_key_disabled(built) and built.has_class("-disabled", "-command-palette")


# ------------------------------------------------------------------ keys


def test_propagation_stopped():
    event = events.Key("x", "x")
    assert not compat.propagation_stopped(event)
    event.stop()
    assert compat.propagation_stopped(event)
    event.stop(False)
    assert not compat.propagation_stopped(event)


class Box(Widget, can_focus=True):
    BINDINGS = [Binding("f", "mark('box')", "Box")]

    def __init__(self, marks: list) -> None:
        super().__init__()
        self.marks = marks

    def action_mark(self, who: str) -> None:
        self.marks.append(who)


class BindingsApp(App):
    BINDINGS = [Binding("g", "mark('app')", "App"), Binding("p", "mark('priority')", "Priority", priority=True)]

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[str] = []

    def compose(self):
        yield Box(self.marks)

    def action_mark(self, who: str) -> None:
        self.marks.append(who)


async def test_run_focused_bindings_runs_the_focused_chain_at_once():
    app = BindingsApp()
    async with app.run_test() as pilot:
        app.query_one(Box).focus()
        await pilot.pause()
        assert await compat.run_focused_bindings(app, "f") and app.marks == ["box"]  # ran before returning
        assert await compat.run_focused_bindings(app, "g") and app.marks == ["box", "app"]
        assert not await compat.run_focused_bindings(app, "z")
        assert not await compat.run_focused_bindings(app, "p"), "priority bindings are not the focused chain's"
        assert app.marks == ["box", "app"]


class Prompt(WrapsDefaultKeys, TextArea):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, bool]] = []

    async def process_key(self, event: events.Key) -> None:
        if event.key == "enter":  # taken before the text area would insert a newline
            event.stop()
            event.prevent_default()
            self.seen.append(("enter", True))
            return
        await self.default_key(event)
        self.seen.append((event.key, compat.propagation_stopped(event)))


class PromptApp(App):
    def compose(self):
        yield Prompt()


async def test_wraps_default_keys_runs_around_the_text_areas_typing():
    app = PromptApp()
    async with app.run_test() as pilot:
        prompt = app.query_one(Prompt)
        prompt.focus()
        await pilot.press("a", "enter", "b", "f9")
        await pilot.pause()
        assert prompt.text == "ab", "typing goes through default_key; the taken Enter inserts nothing"
        # typed keys were taken (stopped) by the text area's own handler; F9 is left for the bindings
        assert prompt.seen[:4] == [("a", True), ("enter", True), ("b", True), ("f9", False)]


# ------------------------------------------------------------------ layout


class Recording(LayoutSizeHook, Widget):
    def __init__(self) -> None:
        super().__init__()
        self.offered: list[tuple[Size, Size, Size]] = []

    def layout_virtual_size(self, size: Size, virtual_size: Size, container_size: Size) -> Size:
        self.offered.append((size, virtual_size, container_size))
        return Size(3, 99)


class RecordingList(SteadyOptionList):
    def __init__(self, *options) -> None:
        super().__init__(*options)
        self.offered: list[tuple[Size, Size]] = []

    def layout_virtual_size(self, size: Size, virtual_size: Size, container_size: Size) -> Size:
        self.offered.append((virtual_size, self.virtual_size))
        return super().layout_virtual_size(size, virtual_size, container_size)


class LayoutApp(App):
    CSS = "Recording { height: 4; } RecordingList { height: 5; }"

    def compose(self):
        yield Recording()
        yield RecordingList(*(Option(f"row {i}") for i in range(40)))


async def test_layout_size_hook_chooses_the_virtual_size():
    app = LayoutApp()
    async with app.run_test(size=(40, 20)) as pilot:
        await pilot.pause()
        plain, rows = app.query_one(Recording), app.query_one(RecordingList)
        assert plain.offered and all(isinstance(s, Size) for call in plain.offered for s in call)
        assert plain.virtual_size == Size(3, 99), "the hook's answer is what the widget keeps"
        assert plain.offered[-1][0] == plain.outer_size
        before = len(rows.offered)
        for _ in range(3):
            app.screen.refresh(layout=True)
            await pilot.pause()
        assert len(rows.offered) > before, "every screen layout hands the list its sizes"
        # what SteadyOptionList exists for: a layout offers the region's height, the list has 40 rows
        offered, own = rows.offered[-1]
        assert offered.height < rows.outer_size.height and own.height == 40
        assert rows.virtual_size.height == 40


# ------------------------------------------------------------------ driver, notifications


async def test_mouse_reporting_switch():
    app = App()
    assert compat.app_driver(app) is None
    async with app.run_test() as pilot:
        driver = compat.app_driver(app)
        assert driver is not None and driver.is_headless and not driver.is_web
        compat.set_mouse_reporting(driver, False)  # the headless driver: nothing to tell, no error
        await pilot.pause()
    terminal = LinuxDriver(App(), mouse=True)
    written: list[str] = []
    terminal.write = written.append  # the terminal's edge: what would be sent to it
    terminal.flush = lambda: None
    compat.set_mouse_reporting(terminal, False)
    assert "\x1b[?1000l" in written and "\x1b[?1000h" not in written
    written.clear()
    compat.set_mouse_reporting(terminal, True)
    assert "\x1b[?1000h" in written and "\x1b[?1000l" not in written


async def test_notification_count_follows_toasts():
    app = App()
    async with app.run_test() as pilot:
        assert compat.notification_count(app) == 0
        app.notify("one", timeout=60)
        app.notify("two", timeout=0.3)
        await wait_for(pilot, lambda: compat.notification_count(app) == 2, timeout=10, what="two toasts")
        await wait_for(pilot, lambda: compat.notification_count(app) == 1, timeout=10, what="a toast to expire")
        app.clear_notifications()
        assert compat.notification_count(app) == 0


# ------------------------------------------------------------------ partial repaints


class LinesRecorded(Widget):
    """A widget that notes the lines each render asks of it."""

    DEFAULT_CSS = "LinesRecorded { height: 1; }"

    def __init__(self, text: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = text
        self.asked: list[int] = []

    def render(self) -> str:
        return self.text

    def render_lines(self, crop):
        self.asked.append(crop.height)
        return super().render_lines(crop)


class RepaintApp(App):
    CSS = """
    #tall { height: 12; border: round red; }
    #list { height: 8; border: solid green; }
    #list > Static { height: 3; }
    """

    def compose(self):
        from textual.containers import VerticalScroll
        from textual.widgets import Static

        tall = LinesRecorded("\n".join(f"line {n} of the tall one" for n in range(10)), id="tall")
        tall.styles.height = 12
        yield tall
        with VerticalScroll(id="list"):
            for n in range(6):
                yield Static(f"[b]item {n}[/b] " + "word " * 12)
        yield LinesRecorded("meter 0", id="meter")


def _partial_paint(screen, regions, get_renders) -> list:
    """The segments a partial repaint of ``regions`` sends to the terminal, rendered with ``get_renders``."""
    from rich.console import Console
    from textual._compositor import Compositor

    kept = Compositor._get_renders
    Compositor._get_renders = get_renders
    try:
        screen._compositor._dirty_regions.update(regions)
        update = screen._compositor.render_partial_update()
    finally:
        Compositor._get_renders = kept
    console = Console(width=screen.size.width, force_terminal=True, color_system="truecolor", legacy_windows=False)
    return list(console.render(update))


async def test_paint_updated_lines_only_renders_those_lines_and_paints_the_same():
    from textual._compositor import Compositor
    from textual.geometry import Region

    compat.paint_updated_lines_only()
    compat.paint_updated_lines_only()  # twice is once
    patched = Compositor._get_renders
    textual_own = patched.textual_get_renders
    assert textual_own is not patched and not getattr(textual_own, "glmtui_lines_only", False)
    app = RepaintApp()
    async with app.run_test(size=(50, 24)) as pilot:
        await pilot.pause()
        app.query_one("#list").scroll_to(y=5, animate=False)
        await pilot.pause()
        tall, meter = app.query_one("#tall", LinesRecorded), app.query_one("#meter", LinesRecorded)
        tall.asked.clear()
        meter.asked.clear()
        meter.text = "meter 1"
        meter.refresh()  # a one-line repaint, as the reply meter's tick
        await wait_for(pilot, lambda: meter.asked, timeout=10, what="the meter's repaint")
        assert set(meter.asked) == {1}
        assert tall.asked == [], "a widget none of whose lines changed is not rendered for the meter's line"
        # the same updates painted with Textual's own renders and with the cropped ones
        screen = app.screen
        for regions in ([Region(0, 21, 50, 1)], [Region(3, 4, 10, 2), Region(2, 15, 20, 1)], [screen.size.region],
                        [Region(0, 13, 50, 9)]):
            ours = _partial_paint(screen, regions, patched)
            theirs = _partial_paint(screen, regions, textual_own)
            assert ours == theirs and any(s.text.strip() for s in ours), regions
