"""Rename, delete and export the current (or highlighted) conversation, and open one from the history.

Their history calls run on the store's worker thread, after every store call asked for before them
(ui/store_calls.py: a store error is shown there, with the unsaved banner, and gives None). The dialogs
open at once, with the title the chat or the history list already shows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Optional

from .app_base import AppBase
from .store_calls import store_calls


class ConversationActions(AppBase):
    def store_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future:
        """``fn(*args, **kwargs)`` on the store's worker thread, in order; await it for its value (None on a
        store error, which was shown)."""
        return store_calls(self).call(fn, *args, **kwargs)

    def _target_conversation(self) -> Optional[int]:
        focused = self.focused
        if focused is not None and self._in_pane(focused, "history"):
            highlighted = self.history_pane.highlighted_id()
            if highlighted is not None:
                return highlighted
        return self.chat_pane.conversation_id

    async def _title_of(self, cid: int) -> Optional[str]:
        """The conversation's title as shown (read from the store only when neither pane shows it); None
        when it no longer exists."""
        if self.chat_pane.conversation_id == cid:
            return self.chat_pane.title
        title = self.history_pane.title_of(cid)
        if title is not None:
            return title
        conv = await self.store_call(self.store.get_conversation, cid)
        return None if conv is None else conv.title

    async def _target_titled(self, missing: str) -> Optional[tuple[int, str]]:
        """The conversation an action is for and its title; None, after saying ``missing`` when there is
        none, or quietly when it no longer exists."""
        cid = self._target_conversation()
        if cid is None:
            self.notify(missing, severity="warning")
            return None
        title = await self._title_of(cid)
        return None if title is None else (cid, title)

    async def action_rename(self) -> None:
        target = await self._target_titled("No conversation to rename yet.")
        if target is None:
            return
        cid, title = target

        async def done(new_title: Optional[str]) -> None:
            if not new_title:
                return
            await self.store_call(self.store.rename, cid, new_title)
            if self.chat_pane.conversation_id == cid:
                self.chat_pane.title = new_title
                self.chat_pane.refresh_header()
            self.history_pane.reload()
            self.refresh_status()

        from .modals import TextModal  # the dialogs are imported when first opened, not for the first frame

        self.push_screen(TextModal("Rename conversation", title, "title"), done)

    async def action_delete_conversation(self) -> None:
        target = await self._target_titled("No conversation to delete.")
        if target is None:
            return
        cid, title = target

        async def done(yes: Optional[bool]) -> None:
            if not yes:
                return
            if self.chat_pane.conversation_id == cid:
                if self.chat_pane.streaming:
                    self.notify("A reply is still streaming: press Esc to stop it first.", severity="warning")
                    return
                await self.chat_pane.show_conversation(None)
            if await self.store_call(self.store.delete_conversation, cid):
                self.notify(f"Deleted “{title}”.", timeout=3)
            self.history_changed()
            self.refresh_status()
            self.refresh_bindings()

        from .modals import ConfirmModal

        self.push_screen(ConfirmModal(f"Delete “{title}” and all its messages?\nThis cannot be undone."), done)

    @property
    def export_folder(self) -> Path:
        return self.paths.data_dir / "exports"

    async def action_export(self) -> None:
        """Write the conversation as .md and .json (new files each time; see HistoryStore.export_files)."""
        cid = self._target_conversation()
        if cid is None:
            self.notify("No conversation to export yet.", severity="warning")
            return
        written = await self.store_call(self.store.export_files, cid, self.export_folder)
        if written is not None:
            self.notify("\n".join(str(p) for p in written), title="Exported", timeout=15)
