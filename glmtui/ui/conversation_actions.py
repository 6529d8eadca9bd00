"""Rename, delete and export the current (or highlighted) conversation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .app_base import AppBase
from .modals import ConfirmModal, TextModal


class ConversationActions(AppBase):
    def _target_conversation(self) -> Optional[int]:
        focused = self.focused
        if focused is not None and self._in_pane(focused, "history"):
            highlighted = self.history_pane.highlighted_id()
            if highlighted is not None:
                return highlighted
        return self.chat_pane.conversation_id

    def action_rename(self) -> None:
        cid = self._target_conversation()
        if cid is None:
            self.notify("No conversation to rename yet.", severity="warning")
            return
        conv = self.db(self.store.get_conversation, cid)
        if conv is None:
            return

        def done(title: Optional[str]) -> None:
            if not title:
                return
            self.db(self.store.rename, cid, title)
            if self.chat_pane.conversation_id == cid:
                self.chat_pane.title = title
                self.chat_pane.refresh_header()
            self.history_pane.reload()
            self.refresh_status()

        self.push_screen(TextModal("Rename conversation", conv.title, "title"), done)

    def action_delete_conversation(self) -> None:
        cid = self._target_conversation()
        if cid is None:
            self.notify("No conversation to delete.", severity="warning")
            return
        conv = self.db(self.store.get_conversation, cid)
        if conv is None:
            return

        async def done(yes: Optional[bool]) -> None:
            if not yes:
                return
            if self.chat_pane.conversation_id == cid:
                if self.chat_pane.streaming:
                    self.notify("A reply is still streaming: press Esc to stop it first.", severity="warning")
                    return
                await self.chat_pane.show_conversation(None)
            if self.db(self.store.delete_conversation, cid):
                self.notify(f"Deleted “{conv.title}”.", timeout=3)
            self.history_changed()
            self.refresh_status()
            self.refresh_bindings()

        self.push_screen(ConfirmModal(f"Delete “{conv.title}” and all its messages?\nThis cannot be undone."), done)

    @property
    def export_folder(self) -> Path:
        return self.paths.data_dir / "exports"

    def action_export(self) -> None:
        """Write the conversation as .md and .json (new files each time; see HistoryStore.export_files)."""
        cid = self._target_conversation()
        if cid is None:
            self.notify("No conversation to export yet.", severity="warning")
            return
        written = self.db(self.store.export_files, cid, self.export_folder)
        if written is not None:
            self.notify("\n".join(str(p) for p in written), title="Exported", timeout=15)
