"""Every silenced check says which rule and why: ``# noqa: CODE - reason``, ``# type: ignore[code]  # reason``.

ruff and mypy check that the code passes; they accept a bare ``# noqa`` or ``# type: ignore`` and one
without a reason, which is what this test refuses.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("glmtui", "tests", "bench")
NOQA = re.compile(r"#\s*noqa\b(?P<codes>:\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)?(?P<rest>.*)")
IGNORE = re.compile(r"#\s*type:\s*ignore\b(?P<codes>\[[^\]]+\])?(?P<rest>.*)")


def suppressions(source: str) -> list[tuple[int, str, str]]:
    """(line, comment, problem) for each silenced check in ``source`` without codes or a reason."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        for pattern, kind in ((NOQA, "noqa"), (IGNORE, "type: ignore")):
            match = pattern.search(token.string)
            if match is None:
                continue
            if not match.group("codes"):
                found.append((token.start[0], token.string, f"a bare {kind}: name the rule"))
            elif not re.search(r"\w", match.group("rest")):
                found.append((token.start[0], token.string, f"{kind} without a reason"))
    return found


def test_the_checker_tells_bare_and_unexplained_from_explained() -> None:
    source = (
        "import a  # noqa\n"
        "import b  # noqa: F401\n"
        "import c  # noqa: F401 - imported for its side effect\n"
        "x = 1  # type: ignore\n"
        "y = 2  # type: ignore[assignment]\n"
        "z = 3  # type: ignore[assignment]  # the stub is wrong here\n"
        "s = '# noqa'  # a string, not a comment\n"
    )
    assert [(line, problem) for line, _, problem in suppressions(source)] == [
        (1, "a bare noqa: name the rule"),
        (2, "noqa without a reason"),
        (4, "a bare type: ignore: name the rule"),
        (5, "type: ignore without a reason"),
    ]


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_suppression_names_its_rule_and_reason(folder: str) -> None:
    problems = [
        f"{path.relative_to(ROOT)}:{line}: {problem}: {comment}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "__snapshots__" not in path.parts
        for line, comment, problem in suppressions(path.read_text(encoding="utf-8"))
    ]
    assert not problems, "\n".join(problems)
