"""Search over titles and messages: FTS5 trigram phrases for terms of three or
more characters, the OR of the indexed trigrams a two-character term begins
(most Chinese words), and a newest-first substring scan for one-character terms
or when this SQLite has no FTS5 trigram tokenizer."""

from __future__ import annotations

import re
import sqlite3
from typing import Optional, Sequence

from glmtui.store.records import SearchHit

# A two-character term whose trigrams are more varied than this is common
# enough for the newest-first scan to find a page of hits quickly.
_BIGRAM_MAX_TOKENS = 256

_TERM_RE = re.compile(r'"([^"]+)"|(\S+)')


def split_terms(query: str) -> list[str]:
    terms = []
    for quoted, bare in _TERM_RE.findall(query):
        term = (quoted or bare).strip()
        if term:
            terms.append(term)
    return terms


def _fts_phrase(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _like_escape(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _has_ascii_letter(term: str) -> bool:
    return any("a" <= ch.lower() <= "z" for ch in term)


def _substring_condition(column: str, term: str) -> tuple[str, str]:
    # instr() is a plain memcmp scan; LIKE is needed only for ASCII case folding.
    if _has_ascii_letter(term):
        return f"{column} LIKE ? ESCAPE '\\'", _like_escape(term)
    return f"instr({column}, ?) > 0", term


def make_snippet(text: str, terms: Sequence[str], marks: tuple[str, str], width: int = 64) -> str:
    """A snippet around the first match of any term (used where FTS5 has none)."""
    low = text.lower()
    best = -1
    best_len = 0
    for term in terms:
        i = low.find(term.lower())
        if i >= 0 and (best < 0 or i < best):
            best, best_len = i, len(term)
    if best < 0:
        piece = text[:width]
        return piece.replace("\n", " ") + ("…" if len(text) > width else "")
    start = max(0, best - width // 2)
    end = min(len(text), best + best_len + width // 2)
    out = text[start:best] + marks[0] + text[best : best + best_len] + marks[1] + text[best + best_len : end]
    out = out.replace("\n", " ")
    return ("…" if start > 0 else "") + out + ("…" if end < len(text) else "")


class Searcher:
    """Runs searches on one connection (the caller holds the store's lock);
    *fts*: the trigram index exists and is used."""

    def __init__(self, fts: bool) -> None:
        self.fts = fts
        self._vocab = False  # the temp fts5vocab table exists on this connection

    def search(self, conn: sqlite3.Connection, query: str, limit: int, marks: tuple[str, str]) -> list[SearchHit]:
        terms = split_terms(query)
        if not terms or limit <= 0:
            return []
        hits: list[SearchHit] = []
        conds, args = [], []
        for t in terms:
            cond, arg = _substring_condition("title", t)
            conds.append(cond)
            args.append(arg)
        for cid, title, created in conn.execute(
            f"SELECT id, title, created_at FROM conversations WHERE {' AND '.join(conds)}"
            " ORDER BY updated_at DESC, id DESC LIMIT ?",
            (*args, limit),
        ):
            hits.append(SearchHit(cid, title, None, None, make_snippet(title, terms, marks), created))
        remaining = limit - len(hits)
        if remaining <= 0:
            return hits
        rows = self._search_messages(conn, terms, remaining, marks)
        for cid, title, mid, role, snip, created, content in rows:
            if not snip or marks[0] not in snip:
                snip = make_snippet(content, terms, marks)
            else:
                snip = snip.replace("\n", " ").strip()
            hits.append(SearchHit(cid, title, mid, role, snip, created))
        return hits

    def _search_messages(
        self, conn: sqlite3.Connection, terms: list[str], limit: int, marks: tuple[str, str]
    ) -> list[tuple]:
        match_parts: list[str] = []
        scan_terms: list[str] = []
        all_long = True
        for t in terms:
            if self.fts and len(t) >= 3:
                match_parts.append(_fts_phrase(t))
                continue
            all_long = False
            tokens = self._bigram_tokens(conn, t) if self.fts and len(t) == 2 else None
            if tokens is None:
                scan_terms.append(t)
            elif not tokens:
                return []  # no trigram starts with it: it occurs nowhere
            else:
                match_parts.append("(" + " OR ".join(_fts_phrase(tok) for tok in tokens) + ")")
        conds, args = [], []
        for t in scan_terms:
            cond, arg = _substring_condition("m.content", t)
            conds.append(cond)
            args.append(arg)
        if match_parts:
            extra = "".join(f" AND {c}" for c in conds)
            snippet = "snippet(messages_fts, 0, ?, ?, '…', 24)" if all_long else "NULL"
            snippet_args = [marks[0], marks[1]] if all_long else []
            return conn.execute(
                f"SELECT m.conversation_id, c.title, m.id, m.role, {snippet}, m.created_at, m.content"
                " FROM messages_fts"
                " JOIN messages m ON m.id = messages_fts.rowid"
                " JOIN conversations c ON c.id = m.conversation_id"
                f" WHERE messages_fts MATCH ?{extra}"
                " ORDER BY messages_fts.rowid DESC LIMIT ?",
                (*snippet_args, " AND ".join(match_parts), *args, limit),
            ).fetchall()
        # Newest first, stopping at the limit: quick for frequent terms; a rare
        # one-character term (or any term without FTS5) reads every message.
        return conn.execute(
            "SELECT m.conversation_id, c.title, m.id, m.role, NULL, m.created_at, m.content"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            f" WHERE {' AND '.join(conds)} ORDER BY m.id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()

    def _bigram_tokens(self, conn: sqlite3.Connection, term: str) -> Optional[list[str]]:
        """The indexed trigrams that begin with two-character *term* (every
        occurrence begins one, thanks to the newline the index appends), or
        None when there are too many to be worth an OR query."""
        if not self._vocab:
            conn.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS temp.messages_fts_vocab"
                " USING fts5vocab(main, messages_fts, row)"
            )
            self._vocab = True
        lo = term.lower()
        nxt = min(ord(lo[-1]) + 1, 0x10FFFF)
        if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be encoded
            nxt = 0xE000
        hi = lo[:-1] + chr(nxt)
        rows = conn.execute(
            "SELECT term FROM temp.messages_fts_vocab WHERE term >= ? AND term < ? LIMIT ?",
            (lo, hi, _BIGRAM_MAX_TOKENS + 1),
        ).fetchall()
        if len(rows) > _BIGRAM_MAX_TOKENS:
            return None
        return [r[0] for r in rows]
