"""Every name glmtui takes from huggingface_hub, textual and transformers exists in the installed versions.

The list of names is kept in one place, glmtui's own source: :func:`used_names` reads it
(``from X import Y``, ``import X``, and ``alias.attr`` chains on what those bind, including a
module returned by a helper such as ``def _hf(): import huggingface_hub; return huggingface_hub``),
so a new use is checked without editing this file, and a version bump that drops or moves a name
fails here with the name and the line that uses it.

Each check runs in a fresh interpreter, as the code would meet it: huggingface_hub >= 2 does not
expose its submodules as lazy attributes of the package, so ``huggingface_hub.constants`` fails in a
new process although it works once anything has imported the submodule by name.  That difference is
what crashed every default download (issue 12, item 1); the same holds for other lazy packages.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "glmtui"
DEPENDENCIES = ("huggingface_hub", "textual", "transformers")


def _root(module: str) -> str:
    return module.split(".")[0]


class _Scope(ast.NodeVisitor):
    """Collects, for one file: (module, name, where) for every ``from module import name``, and
    (binding, attribute chain, where) for every ``name.a.b`` whose name an import of a dependency bound."""

    def __init__(self, rel: str):
        self.rel = rel
        self.froms: list[tuple[str, str, str]] = []
        self.imports: list[tuple[str, str]] = []
        self.uses: list[tuple[tuple[str, str], tuple[str, ...], str]] = []
        self.helpers: dict[str, tuple[str, str]] = {}  # function name -> the imported dependency it returns
        self._bound: list[dict[str, tuple[str, str]]] = [{}]  # name -> (module, name or "") per scope

    def _where(self, node: ast.AST) -> str:
        return f"{self.rel}:{node.lineno}"

    def _lookup(self, name: str):
        for scope in reversed(self._bound):
            if name in scope:
                return scope[name]
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _root(alias.name) in DEPENDENCIES:
                self.imports.append((alias.name, self._where(node)))
                if alias.asname:
                    self._bound[-1][alias.asname] = (alias.name, "")
                else:
                    self._bound[-1][_root(alias.name)] = (_root(alias.name), "")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module or _root(node.module) not in DEPENDENCIES:
            return
        for alias in node.names:
            if alias.name == "*":
                continue
            self.froms.append((node.module, alias.name, self._where(node)))
            self._bound[-1][alias.asname or alias.name] = (node.module, alias.name)

    def _visit_function(self, node) -> None:
        self._bound.append({})
        shadowed = {a.arg for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs}
        for name in shadowed:
            self._bound[-1][name] = None  # a parameter hides an imported name
        self.generic_visit(node)
        for stmt in ast.walk(node):  # a helper that imports something from a dependency and returns it
            if isinstance(stmt, ast.Return) and isinstance(stmt.value, ast.Name):
                bound = self._bound[-1].get(stmt.value.id)
                if bound:
                    self.helpers[node.name] = bound
        self._bound.pop()

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        value = node.value
        helper = self._helper_call(value)
        for target in node.targets:
            if isinstance(target, ast.Name):
                if helper:
                    self._bound[-1][target.id] = helper
                elif len(self._bound) > 1:
                    self._bound[-1][target.id] = None  # a local variable hides an imported name

    def _helper_call(self, node: ast.AST):
        """What ``helper()`` returns, when ``node`` calls such a helper with no arguments."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args and not node.keywords:
            return self.helpers.get(node.func.id)
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain: list[str] = []
        base: ast.AST = node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        bound = self._lookup(base.id) if isinstance(base, ast.Name) else self._helper_call(base)
        if bound:
            self.uses.append((bound, tuple(reversed(chain)), self._where(node)))
            if isinstance(base, ast.Name):
                return  # the whole chain is recorded; its inner Attribute nodes are prefixes of it
        self.generic_visit(node)


def used_names(package: Path = PACKAGE) -> dict:
    """{"from": [(module, name, where)], "import": [(module, where)], "attr": [(module, name, chain, where)]}."""
    out: dict = {"from": [], "import": [], "attr": []}
    for path in sorted(package.rglob("*.py")):
        rel = str(path.relative_to(package.parent))
        scope = _Scope(rel)
        scope.visit(ast.parse(path.read_text(encoding="utf-8"), filename=rel))
        out["from"] += scope.froms
        out["import"] += scope.imports
        out["attr"] += [(m, n, chain, where) for (m, n), chain, where in scope.uses]
    return out


# Runs in a fresh interpreter: a JSON list of checks in; out, the failures and the attribute reads whose
# answer depends on what was imported before (a read that met a module, or failed), to redo on their own.
_CHECKER = r"""
import importlib, json, sys, types
failures, redo = [], []
checks = json.loads(sys.argv[1])
alone = len(checks) == 1
for check in checks:
    kind, module, name, chain, where = check
    try:
        if kind == "import":
            importlib.import_module(module)
            continue
        if kind == "from":
            exec(f"from {module} import {name}", {})
            continue
        obj = importlib.import_module(module)          # import module / from module import name
        if name:
            obj = getattr(obj, name) if hasattr(obj, name) else importlib.import_module(f"{module}.{name}")
        for attr in chain:                              # then the attribute chain, as the code reads it
            obj = getattr(obj, attr)
            if isinstance(obj, types.ModuleType) and not alone:
                redo.append(check)
                break
    except Exception as e:
        if kind == "attr" and not alone:
            redo.append(check)
        else:
            failures.append([kind, module, name, chain, where, f"{type(e).__name__}: {e}"])
print(json.dumps([failures, redo]))
"""


def _run(checks: list) -> list:
    """The failures among ``checks``: all in one fresh interpreter, then each order-dependent
    attribute read again in an interpreter of its own."""
    out = subprocess.run([sys.executable, "-c", _CHECKER, json.dumps(checks)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    failures, redo = json.loads(out.stdout.strip().splitlines()[-1])
    for check in redo:
        failures += _run([check])
    return failures


def _describe(failure: list) -> str:
    kind, module, name, chain, where, error = failure
    if kind == "import":
        what = f"import {module}"
    elif kind == "from":
        what = f"from {module} import {name}"
    else:
        base = f"{module}.{name}" if name else module
        what = f"{base}.{'.'.join(chain)} (an attribute read)"
    return f"{where}: {what} -> {error}"


def _versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{d} {version(d)}" for d in DEPENDENCIES)


@pytest.mark.slow
def test_the_scan_finds_what_glmtui_uses():
    """The list is not empty, and it sees the uses this test exists for (so a broken scan cannot pass)."""
    names = used_names()
    froms = {(m, n) for m, n, _ in names["from"]}
    assert ("huggingface_hub", "HfApi") in froms
    assert ("huggingface_hub", "constants") in froms  # glmtui.hub reads ENDPOINT from it
    assert ("textual.app", "App") in froms
    assert any(_root(m) == "transformers" for m, _ in froms)
    assert any(m == "huggingface_hub" and n == "errors" for m, n, _, _ in names["attr"])
    # Textual's private modules: the scan sees them, and only in glmtui/ui/compat.py (tests/ui/test_textual_compat.py
    # checks the private names read off objects there, which no import names)
    private = [(m, n, w) for m, n, w in names["from"] if _root(m) == "textual" and "._" in m]
    assert {("textual.widgets._footer", "FooterKey"), ("textual.widgets._markdown", "MarkdownTable")} <= {
        (m, n) for m, n, _ in private}
    assert all(w.startswith("glmtui/ui/compat.py:") for _, _, w in private), private


def test_the_scan_sees_a_module_reached_through_a_helper(tmp_path):
    """The shape of the old bug: a helper returns the package and the caller reads a submodule off it."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text(
        "def _hf():\n    import huggingface_hub\n\n    return huggingface_hub\n\n\n"
        "def endpoint():\n    hf = _hf()\n    return hf.constants.ENDPOINT\n"
    )
    attrs = used_names(pkg)["attr"]
    assert attrs == [("huggingface_hub", "", ("constants", "ENDPOINT"), "pkg/mod.py:9")]
    # importing HfApi first binds huggingface_hub.constants in that process: the read is redone alone
    checks = [["from", "huggingface_hub", "HfApi", [], "pkg/other.py:1"]]
    failures = _run(checks + [["attr", m, n, list(c), w] for m, n, c, w in attrs])
    assert [f[4] for f in failures] == ["pkg/mod.py:9"]  # huggingface_hub 2.x: no lazy `constants` attribute


@pytest.mark.slow  # fresh interpreters import each dependency (transformers: the big scan)
@pytest.mark.parametrize("dependency", DEPENDENCIES)
def test_every_name_glmtui_uses_exists(dependency):
    names = used_names()
    checks = [["import", m, "", [], w] for m, w in names["import"] if _root(m) == dependency]
    checks += [["attr", m, n, list(chain), w] for m, n, chain, w in names["attr"] if _root(m) == dependency]
    checks += [["from", m, n, [], w] for m, n, w in names["from"] if _root(m) == dependency]
    failures = _run(checks)
    assert not failures, (
        f"glmtui uses names that the installed {_versions()} do not have (fix the code, or the pins in "
        "pyproject.toml):\n" + "\n".join(_describe(f) for f in failures)
    )
