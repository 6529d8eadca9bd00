"""Output that is kept up to a limit and counted beyond it.

A tool or a code block may print without end; what comes back to the model and
the screen is the first ``limit`` bytes and a note of how much more there was,
never the whole of it in memory.
"""

from __future__ import annotations

import codecs

DEFAULT_LIMIT = 64 * 1024


def human_bytes(count: int) -> str:
    """1536 -> "1.5 KB", 104857600 -> "100 MB" (binary multiples, short names)."""
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            if unit == "bytes":
                return f"{int(value)} bytes"
            return f"{value:.1f}".rstrip("0").rstrip(".") + f" {unit}"
        value /= 1024
    return f"{count} bytes"  # pragma: no cover - the loop always returns


class CappedText:
    """Collects text pieces; keeps the first ``limit`` bytes (UTF-8), counts the rest."""

    def __init__(self, limit: int = DEFAULT_LIMIT):
        self.limit = limit
        self._parts: list[str] = []
        self._kept = 0
        self.dropped = 0  # bytes not kept
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")  # chunks may split a character

    def add(self, text: str) -> None:
        if not text:
            return
        if self.dropped:
            self.dropped += len(text.encode("utf-8", "replace"))
            return
        data = text.encode("utf-8", "replace")
        room = self.limit - self._kept
        if len(data) <= room:
            self._parts.append(text)
            self._kept += len(data)
            return
        head = data[:room].decode("utf-8", "ignore")  # never half a character
        self._parts.append(head)
        self._kept = self.limit
        self.dropped += len(data) - len(head.encode("utf-8"))

    def add_bytes(self, data: bytes, final: bool = False) -> None:
        self.add(self._decoder.decode(data, final))

    @property
    def text(self) -> str:
        """What was kept, without the note."""
        return "".join(self._parts)

    def render(self) -> str:
        """The kept text, and "… N MB more not shown" when something was dropped."""
        text = self.text
        if self.dropped:
            sep = "" if not text or text.endswith("\n") else "\n"
            text += f"{sep}… {human_bytes(self.dropped)} more not shown"
        return text
