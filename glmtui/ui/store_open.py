"""The app's history store, opened on a thread of its own: the first frame does not wait for the file's open
and damage check (``PRAGMA quick_check``, longer as the history grows; a damaged file's salvage).

``OpeningStore`` stands for the HistoryStore it opens. A method called on it before the open is done waits for
the open on the calling thread (the store's worker, ui/store_calls.py), then runs on the store opened: nothing
asked for early is lost or runs on a half-open store. ``unsaved`` and ``in_memory``, which the UI thread paints,
answer "nothing to say yet" until then instead of waiting. ``open_store``: the file, or memory when it cannot be
used, with what to tell the user.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, cast

from glmtui.config import Paths
from glmtui.store import HistoryError, HistoryStore

from .model_controller import Severity


def open_store(paths: Paths, notes: list[tuple[Severity, str]]) -> HistoryStore:
    """The history file, or an in-memory store when it cannot be opened (why goes into ``notes``)."""
    try:
        store = HistoryStore.open(paths.history_db)
    except HistoryError as exc:
        notes.append(("error", f"{exc} Chats are kept in memory for this session only."))
        return HistoryStore.open_memory(reason=f"They are kept in memory for this session only. {exc}")
    except Exception as exc:  # noqa: BLE001 - never refuse to start over history
        notes.append(("error", f"Chat history unavailable ({exc}); kept in memory for this session only."))
        return HistoryStore.open_memory(reason=f"They are kept in memory for this session only ({exc}).")
    if store.warning:
        notes.append(("warning", store.warning))
    if store.notice:
        notes.append(("information", store.notice))
    return store


class OpeningStore:
    """The history store of ``paths``, opened by ``open_store`` on the thread "glmtui-store-open" (started here)."""

    def __init__(self, paths: Paths) -> None:
        self._store: Optional[HistoryStore] = None
        self._error: Optional[BaseException] = None
        self._opened = threading.Event()
        self.notes: list[tuple[Severity, str]] = []  # what the open has to tell the user (read once opened)
        threading.Thread(target=self._open, args=(paths,), name="glmtui-store-open", daemon=True).start()

    def _open(self, paths: Paths) -> None:
        try:
            self._store = open_store(paths, self.notes)
        except BaseException as exc:  # noqa: BLE001 - not even memory: every call says so (wait())
            self._error = exc
        finally:
            self._opened.set()

    def as_store(self) -> HistoryStore:
        """This, typed as the store it stands for (every HistoryStore attribute works on it)."""
        return cast(HistoryStore, self)

    @property
    def opened(self) -> bool:
        return self._opened.is_set()

    def wait(self) -> HistoryStore:
        """The store, once open (waits on this thread: never call it on the UI thread)."""
        self._opened.wait()
        if self._store is None:
            raise HistoryError(f"The chat history could not be opened ({self._error}).")
        return self._store

    @property
    def unsaved(self) -> Optional[str]:
        """The store's ``unsaved``; None while it opens (the app shows the banner once it is open)."""
        if self._store is not None:
            return self._store.unsaved
        return f"The chat history could not be opened ({self._error})." if self.opened else None

    @property
    def in_memory(self) -> bool:
        """The store's ``in_memory``; False while it opens (the app repaints the status line once it is open)."""
        return self._store is None and self.opened or self._store is not None and self._store.in_memory

    def __getattr__(self, name: str) -> Any:
        # only for what this class lacks: HistoryStore's own attributes
        if name.startswith("__"):
            raise AttributeError(name)
        store = self.__dict__.get("_store")
        if store is not None:
            return getattr(store, name)
        if callable(getattr(HistoryStore, name, None)):  # a method: it waits when called, where it is called
            return _later(self, name)
        return getattr(self.wait(), name)  # a property or a value: needs the store now


def _later(opening: OpeningStore, name: str) -> Callable[..., Any]:
    """``opening``'s store's method ``name``, waiting for the open when called."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(opening.wait(), name)(*args, **kwargs)

    call.__name__ = name
    return call
