"""The house rules of issue 15, read from glmtui/'s source with ast (nothing is imported, so this runs in well under a
second): file size, no import circles, the engine below the server and the UI, no torch in the front end's imports,
no UI module importing the app, every module named in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "glmtui"
MAX_LINES = 600
SAY_WHY_OVER = 400  # past this, one cohesive thing that says why in its first lines (issue 15)
HEAVY = ("torch", "transformers")
# The front end: what runs in the process the user types into (the engine process and `serve` may import torch).
FRONT_END = ("glmtui.ui", "glmtui.cli", "glmtui.linechat", "glmtui.web")
APP = "glmtui.ui.app"  # wires the UI together: what it wires never imports it back


@dataclass
class Module:
    name: str  # dotted: glmtui.ui.app; a package's __init__ is the package itself (glmtui.ui)
    path: Path
    is_package: bool
    tree: ast.Module
    # (target, line) for every import, resolved to dotted names; top = run when the module is imported
    top: list[tuple[str, int]] = field(default_factory=list)
    anywhere: list[tuple[str, int]] = field(default_factory=list)


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(body: list[ast.stmt]):
    """The import statements that run when the module is imported: not inside functions or `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level_imports(part)
        elif isinstance(node, (ast.With, ast.For, ast.While, ast.ClassDef)):
            yield from _top_level_imports(node.body)
            yield from _top_level_imports(getattr(node, "orelse", []))


def _targets(node: ast.Import | ast.ImportFrom, mod: Module, known: set[str]) -> list[str]:
    """Dotted names an import statement loads: `from .x import y` is x.y when y is a module, else x."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = mod.name.split(".")
        if not mod.is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    found = []
    for alias in node.names:
        sub = f"{prefix}.{alias.name}"
        found.append(sub if sub in known else prefix)
    return found


_loaded: dict[Path, dict[str, Module]] = {}  # PACKAGE -> its modules: the rules below read one parse


def load_modules() -> dict[str, Module]:
    """Every module under PACKAGE, parsed once per run (the rules only read what this returns)."""
    if PACKAGE not in _loaded:
        _loaded[PACKAGE] = _parse_modules()
    return _loaded[PACKAGE]


def _parse_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, is_package = _module_name(path)
        modules[name] = Module(name, path, is_package, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    known = set(modules)
    for mod in modules.values():
        for node in _top_level_imports(mod.tree.body):
            mod.top += [(t, node.lineno) for t in _targets(node, mod, known)]
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod.anywhere += [(t, node.lineno) for t in _targets(node, mod, known)]
    return modules


def _rel(mod: Module) -> str:
    return str(mod.path.relative_to(PACKAGE.parent))


def _owner(target: str, known: set[str]) -> str | None:
    """The glmtui module a dotted import name lands in (`glmtui.hub.Foo` -> glmtui.hub), None outside glmtui."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for mod in modules.values():
        for target, _ in mod.top:
            owner = _owner(target, known)
            if owner and owner != mod.name:
                graph[mod.name].add(owner)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _one_circle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete path round a component, for the message (a -> b -> a)."""
    members = set(component)
    start = component[0]
    prev: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return component


# ------------------------------------------------------------------ the rules


def test_no_file_in_glmtui_is_over_600_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            long.append(f"{path.relative_to(PACKAGE.parent)} ({lines} lines)")
    assert not long, f"files over {MAX_LINES} lines (split them by job): " + ", ".join(long)


def test_a_file_over_400_lines_says_in_its_first_lines_why_it_is_kept_whole():
    unsaid = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        head = "\n".join(text.splitlines()[:3]).lower()
        if len(text.splitlines()) > SAY_WHY_OVER and "kept whole past 400 lines" not in head:
            unsaid.append(str(path.relative_to(PACKAGE.parent)))
    assert not unsaid, "over 400 lines, no 'Kept whole past 400 lines: <why>' at the top: " + ", ".join(unsaid)


def test_no_import_circles_between_glmtui_modules():
    graph = import_graph(load_modules())
    found = cycles(graph)
    described = [" -> ".join(_one_circle(c, graph)) + f"  (all of: {', '.join(c)})" for c in found]
    assert not found, "import circles (module-level imports):\n  " + "\n  ".join(described)


def test_the_engine_imports_neither_the_server_nor_the_ui():
    modules = load_modules()
    bad = []
    for mod in modules.values():
        if not (mod.name == "glmtui.engine" or mod.name.startswith("glmtui.engine.")):
            continue
        for target, line in mod.anywhere:
            if any(target == up or target.startswith(up + ".") for up in ("glmtui.server", "glmtui.ui")):
                bad.append(f"{_rel(mod)}:{line} imports {target}")
    assert not bad, "glmtui/engine reaches up into the server or the UI:\n  " + "\n  ".join(bad)


def _front_end(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in FRONT_END)


def test_the_front_end_does_not_import_torch_at_module_level():
    """Static, transitive: every glmtui module the front end imports at module level (with the packages above it,
    whose __init__ runs first) must not import torch/transformers at module level. tests/ui/test_ui.py's
    first-screen test checks the same at run time for the TUI only."""
    modules = load_modules()
    known = set(modules)
    bad = []
    for start in sorted(n for n in modules if _front_end(n)):
        came_from: dict[str, str | None] = {start: None}
        todo = [start]
        while todo:
            name = todo.pop()
            mod = modules[name]
            for target, line in mod.top:
                if target.split(".")[0] in HEAVY:
                    chain = [name]
                    parent = came_from[name]
                    while parent is not None:
                        chain.append(parent)
                        parent = came_from[parent]
                    via = " <- ".join(chain)
                    bad.append(f"{_rel(mod)}:{line} imports {target} (imported by {via})")
                    continue
                owner = _owner(target, known)
                if owner is None:
                    continue
                parts = owner.split(".")
                for reached in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                    if reached in known and reached not in came_from:
                        came_from[reached] = name
                        todo.append(reached)
    assert not bad, "the front end imports torch/transformers at module level:\n  " + "\n  ".join(sorted(set(bad)))


def test_no_ui_module_imports_the_app():
    """Panes, screens and views name what they use of the app as a host Protocol (ChatHost, ModelsHost,
    CompletionHost, AgentHost ...) or get it in messages: an import of ui/app.py, even a TYPE_CHECKING or
    function-level one, ties the widget to the whole app (and mypy then follows the circle back)."""
    modules = load_modules()
    known = set(modules)
    bad = []
    for mod in modules.values():
        if not mod.name.startswith("glmtui.ui.") or mod.name == APP:
            continue
        for target, line in mod.anywhere:
            if _owner(target, known) == APP:
                bad.append(f"{_rel(mod)}:{line} imports {target}")
    assert not bad, "UI modules import ui/app.py (type the host as a Protocol instead):\n  " + "\n  ".join(bad)


def test_every_glmtui_module_is_named_in_the_architecture():
    """docs/ARCHITECTURE.md's house lists every module of glmtui/ with its one job: a new module goes there too."""
    doc = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [str(path.relative_to(PACKAGE.parent)) for path in sorted(PACKAGE.rglob("*.py"))
               if path.name != "__init__.py" and not re.search(rf"(?<![\w.]){re.escape(path.name)}\b", doc)]
    assert not missing, "modules docs/ARCHITECTURE.md does not name (add each with its job):\n  " + "\n  ".join(missing)


# ------------------------------------------------------------------ the checker checks itself


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_circle_finder_reads_relative_imports_and_ignores_function_level_ones(tmp_path, monkeypatch):
    pkg = tmp_path / "glmtui"
    _write(pkg, {
        "__init__.py": "",
        "a.py": "from . import b\n",                     # -> glmtui.b (a module)
        "b.py": "from .sub.c import thing\n",             # -> glmtui.sub.c (thing is a name)
        "sub/__init__.py": "from .c import thing\n",     # the package's __init__ is a module of its own
        "sub/c.py": "from .. import a\nthing = 1\n",     # -> glmtui.a: a -> b -> sub.c -> a
        "d.py": "def f():\n    from . import e\n",        # function-level: no edge
        "e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\nfrom .d import f\n",
    })
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    graph = import_graph(load_modules())
    assert graph["glmtui.a"] == {"glmtui.b"}
    assert graph["glmtui.b"] == {"glmtui.sub.c"}
    assert graph["glmtui.sub"] == {"glmtui.sub.c"}
    assert graph["glmtui.d"] == set() and graph["glmtui.e"] == {"glmtui.d"}
    assert cycles(graph) == [["glmtui.a", "glmtui.b", "glmtui.sub.c"]]
    assert _one_circle(["glmtui.a", "glmtui.b", "glmtui.sub.c"], graph) == [
        "glmtui.a", "glmtui.b", "glmtui.sub.c", "glmtui.a"]


def test_the_torch_rule_follows_module_level_imports_and_package_inits(tmp_path, monkeypatch):
    pkg = tmp_path / "glmtui"
    _write(pkg, {
        "__init__.py": "",
        "cli.py": "from .engine.api import x\n",
        "engine/__init__.py": "import torch\n",        # runs before engine.api
        "engine/api.py": "x = 1\n",
        "linechat.py": "def f():\n    import transformers\n",  # lazily: allowed
    })
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    with pytest.raises(AssertionError) as failed:
        test_the_front_end_does_not_import_torch_at_module_level()
    text = str(failed.value)
    assert "glmtui/engine/__init__.py:1 imports torch" in text and "glmtui.cli" in text
    assert "linechat" not in text


def test_the_app_rule_sees_type_checking_and_function_level_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "glmtui"
    _write(pkg, {
        "__init__.py": "",
        "cli.py": "def main():\n    from .ui.app import run_app\n",    # outside the UI: allowed
        "ui/__init__.py": "",
        "ui/app.py": "from .pane import Pane\nclass GlmApp: ...\n",
        "ui/pane.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .app import GlmApp\n",
        "ui/view.py": "def f():\n    from . import app\n",
        "ui/dialogs/__init__.py": "",
        "ui/dialogs/load.py": "from glmtui.ui.app import GlmApp\n",
        "ui/chat.py": "from .pane import Pane\n",
    })
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    with pytest.raises(AssertionError) as failed:
        test_no_ui_module_imports_the_app()
    text = str(failed.value)
    assert "glmtui/ui/pane.py:3 imports glmtui.ui.app" in text
    assert "glmtui/ui/view.py:2 imports glmtui.ui.app" in text
    assert "glmtui/ui/dialogs/load.py:1 imports glmtui.ui.app" in text
    assert "glmtui/cli.py" not in text and "glmtui/ui/chat.py" not in text and "glmtui/ui/app.py:" not in text


def test_the_architecture_rule_names_a_module_the_doc_leaves_out(tmp_path, monkeypatch):
    pkg = tmp_path / "glmtui"
    _write(pkg, {"__init__.py": "", "cli.py": "", "ui/__init__.py": "", "ui/chat.py": "", "ui/chat_input.py": ""})
    _write(tmp_path / "docs", {"ARCHITECTURE.md": "cli.py entry points; ui/: chat_input.py (the prompt)\n"})
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    with pytest.raises(AssertionError) as failed:
        test_every_glmtui_module_is_named_in_the_architecture()
    text = str(failed.value)
    assert "glmtui/ui/chat.py" in text  # chat_input.py does not name chat.py
    assert "glmtui/cli.py" not in text and "chat_input" not in text and "__init__" not in text
