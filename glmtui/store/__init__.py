"""Conversation history in SQLite (standard library only; no UI, no torch).

The rooms: :mod:`.schema` (tables, ``PRAGMA user_version`` migrations, what each
open does), :mod:`.files` (the file on disk: set-aside, read-only, open lock),
:mod:`.opening` (repair loop, read-only copy), :mod:`.recovery` (damage check
and salvage), :mod:`.search` (FTS5 trigram / bigram / substring scan),
:mod:`.history` (:class:`HistoryStore`), :mod:`.exchange` and :mod:`.export`
(conversations as data, the JSON Lines history, Markdown and files), :mod:`.formats`
(what ``glmtui history import`` reads). The names below are the public
ones; patch a name in the module that owns it, not here.
"""

from glmtui.store.errors import HistoryError
from glmtui.store.exchange import EXPORT_FORMAT, ExchangeError
from glmtui.store.history import HistoryStore
from glmtui.store.records import ROLES, STATUSES, Conversation, SearchHit, StoredMessage
from glmtui.store.schema import SCHEMA_VERSION, STALE_STREAMING_S, fts_available

__all__ = [
    "SCHEMA_VERSION",
    "STALE_STREAMING_S",
    "EXPORT_FORMAT",
    "ROLES",
    "STATUSES",
    "HistoryError",
    "ExchangeError",
    "Conversation",
    "StoredMessage",
    "SearchHit",
    "HistoryStore",
    "fts_available",
]
