"""Copying out of the chat: a message's code blocks, what a copy toast says, the block picker.

The text goes to the terminal's clipboard through Textual's ``App.copy_to_clipboard``
(OSC 52), which works over SSH where the terminal (or tmux with ``set-clipboard on``)
accepts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Optional

from markdown_it import MarkdownIt
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option


@dataclass(frozen=True)
class CodeBlock:
    language: str  # the fence's info word ("python"), "" when none or an indented block
    code: str  # the block's text, without the fences

    @property
    def lines(self) -> int:
        return len(self.code.splitlines())

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.code.splitlines() if line.strip()), "")


def code_blocks(markdown: str) -> list[CodeBlock]:
    """The fenced and indented code blocks of ``markdown``, in order (nested in lists and quotes too)."""
    blocks = []
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type in ("fence", "code_block"):
            language = token.info.split()[0] if token.type == "fence" and token.info.strip() else ""
            blocks.append(CodeBlock(language, token.content))
    return blocks


def copied_text_note(what: str, text: str) -> str:
    """The toast for a whole message: "copied reply, 1,234 characters"."""
    count = len(text)
    return f"copied {what}, {count:,} character{'s' if count != 1 else ''}"


def copied_block_note(block: CodeBlock) -> str:
    """The toast for a code block: "copied python block, 12 lines"."""
    lines = block.lines
    return f"copied {block.language or 'code'} block, {lines:,} line{'s' if lines != 1 else ''}"


def block_label(block: CodeBlock, width: int = 56) -> Text:
    """One picker row: the language, then the block's first line (cut to ``width``)."""
    line = block.first_line
    if len(line) > width:
        line = line[: width - 1] + "…"
    label = Text(f"{block.language or 'code':<10} ", style="bold")
    label.append(line or "(empty)", style="" if line else "dim")
    label.append(f"  {block.lines} line{'s' if block.lines != 1 else ''}", style="dim")
    return label


class CodePickerModal(ModalScreen[Optional[int]]):
    """Which code block to copy: Enter or its number copies, Esc cancels. Returns the block's index."""

    AUTO_FOCUS = "#blocks"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        *(Binding(str(n), f"pick({n - 1})", show=False) for n in range(1, 10)),
    ]

    def __init__(self, blocks: list[CodeBlock], **kwargs) -> None:
        super().__init__(**kwargs)
        self.blocks = blocks

    def compose(self) -> Iterable:
        with Vertical(classes="dialog"):
            yield Label(f"Copy which code block? ({len(self.blocks)} in this message)", classes="dialog-title")
            rows = []
            for index, block in enumerate(self.blocks):
                row = Text(f"{index + 1} " if index < 9 else "  ", style="dim")
                row.append_text(block_label(block))
                rows.append(Option(row, id=str(index)))
            yield OptionList(*rows, id="blocks")
            yield Static(Text("Enter or 1-9 copies · Esc cancels", style="dim"))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(int(event.option.id or 0))

    def action_pick(self, index: int) -> None:
        if 0 <= index < len(self.blocks):
            self.dismiss(index)

    def action_cancel(self) -> None:
        self.dismiss(None)
