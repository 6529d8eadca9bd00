"""Exported conversations: the Markdown text, and files that never replace earlier ones.

The JSON export keeps every character exactly (JSON escapes control
characters itself). Markdown is read in terminals and editors, where a raw
ESC or other control character can recolour, move the cursor or hide text:
:func:`printable` shows each one as a visible ``\\x1b``-style escape instead
(tabs and newlines stay; a CR before a newline is dropped).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

# C0 controls but tab and newline, DEL, and the C1 controls (terminals read U+009B as CSI)
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")

_STATUS_NOTES = {
    "streaming": "still being written",
    "stopped": "stopped before the end",
    "interrupted": "interrupted (glmtui closed while writing)",
    "error": "failed",
}


def printable(text: str) -> str:
    """*text* with control characters (except tab and newline) written as escapes."""
    text = text.replace("\r\n", "\n")
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _line(text: str) -> str:
    """For a heading or list item: one line."""
    return printable(" ".join(str(text).split("\n")))


def render_markdown(data: Mapping[str, Any]) -> str:
    """The Markdown export of :meth:`HistoryStore.to_dict` output."""
    out = [f"# {_line(data['title'] or 'Untitled conversation')}", ""]
    if data["model"]:
        out.append(f"- Model: {_line(data['model'])}")
    out.append(f"- Created: {data['created_at']}")
    out.append(f"- Updated: {data['updated_at']}")
    if data["params"]:
        out.append("- Parameters: " + _line(", ".join(f"{k}={v}" for k, v in data["params"].items())))
    out.append("")
    if data["system_prompt"]:
        out += ["## System prompt", "", printable(data["system_prompt"]), ""]
    out += ["---", ""]
    for m in data["messages"]:
        heading = m["role"].capitalize()
        if m["metadata"]:
            heading += f" ({_line(m['metadata'])})"
        out.append(f"### {heading}")
        out.append("")
        if m.get("reasoning"):  # a reasoning model's <think> text, quoted before the answer
            out += ["> *Reasoning*", ">"] + ["> " + line for line in printable(m["reasoning"]).splitlines()] + [""]
        out += [printable(m["content"]), ""]
        notes = []
        if m["status"] != "complete":
            notes.append(_STATUS_NOTES.get(m["status"], m["status"]))
        stats = m["stats"] or {}
        if stats.get("completion_tokens") is not None:
            notes.append(f"{stats['completion_tokens']} tokens")
        if isinstance(stats.get("tokens_per_s"), (int, float)):
            notes.append(f"{stats['tokens_per_s']:.1f} tokens/s")
        if isinstance(stats.get("ttft"), (int, float)):
            notes.append(f"first token after {stats['ttft']:.2f} s")
        wrote = " · ".join(str(stats[k]) for k in ("model", "mode", "device") if stats.get(k))
        if wrote:  # what wrote the reply, as its footer in the app shows it
            notes.append(_line(wrote))
        if stats.get("error"):
            notes.append(_line(str(stats["error"])))
        if notes:
            out += ["*" + "; ".join(notes) + "*", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def slug(title: str) -> str:
    """A file-name-safe form of a conversation title."""
    text = re.sub(r"[^\w]+", "-", title, flags=re.UNICODE).strip("-").lower()
    return text[:48] or "conversation"


def create_new(folder: Path, base: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Create empty, private files ``<base><suffix>`` in *folder* that did not
    exist before, for every suffix under one name: ``<base>``, else
    ``<base>-2``, ``-3``, … (O_EXCL, so a concurrent export cannot take them)."""
    n = 1
    while True:
        stem = base if n == 1 else f"{base}-{n}"
        made: list[Path] = []
        try:
            for suffix in suffixes:
                path = folder / f"{stem}{suffix}"
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                made.append(path)
            return made
        except FileExistsError:
            for path in made:  # ours, still empty: give the name back
                path.unlink(missing_ok=True)
            n += 1
