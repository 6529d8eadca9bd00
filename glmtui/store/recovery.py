"""Checking a history file when it is opened, and salvaging a damaged one.

A file whose header is intact can still have damaged pages that a successful
open never touches: :func:`quick_check` runs ``PRAGMA quick_check`` within a
time budget (a progress handler interrupts it), so a big file cannot hold up
the start. When damage is found, the store renames the file aside untouched
and :func:`salvage` copies every conversation and message that can still be
read into the new file:

* the ``sqlite3`` command-line shell's ``.recover`` when it is installed and
  works (it reads pages directly, so it also finds rows below a damaged
  interior page; some builds lack the page access it needs and fail at once);
* and always row-by-row reads through SQLite on a copy of the file, which skip
  the rowid ranges whose pages cannot be read (:func:`_scan_table`).

Rows are checked against the schema before they are inserted, a message whose
conversation row is lost gets a "Recovered conversation" in its place, and the
new file's triggers build its search index from scratch.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from glmtui.store.records import ROLES as _ROLES
from glmtui.store.records import STATUSES as _STATUSES

# Seconds PRAGMA quick_check may take at open (it reads every page: a few hundred MB per
# second on a local disk). It runs before the first frame, whose target is 1 s: pages past the
# budget are checked by use (a query that meets damage leaves a note and the next start repairs).
CHECK_BUDGET_S = 0.5
# Seconds the sqlite3 shell may take for .recover before the row reads go on alone.
CLI_TIMEOUT_S = 120.0

_MIN_ROWID = -(2**63)
_MAX_ROWID = 2**63 - 1

_CONV_COLS = ("id", "title", "model", "system_prompt", "params", "created_at", "updated_at")
_MSG_COLS = (
    "id", "conversation_id", "position", "role", "content", "status",
    "stats", "metadata", "owner", "created_at", "updated_at",
)  # + "reasoning" from schema 3 on


@dataclass(frozen=True)
class CheckResult:
    problem: Optional[str]  # None: no damage found
    complete: bool  # False: the budget ran out before every page was read


@dataclass(frozen=True)
class Salvaged:
    conversations: int  # conversations in the new file (placeholders included)
    messages: int
    untitled: int  # conversations whose own row was lost (placeholders)
    method: str  # "sqlite3 .recover + row reads" or "row reads"


def quick_check(conn: sqlite3.Connection, budget_s: float = CHECK_BUDGET_S) -> CheckResult:
    """``PRAGMA quick_check`` stopped after *budget_s* seconds. Corruption that
    stops the check itself propagates as :class:`sqlite3.DatabaseError`."""
    deadline = time.monotonic() + budget_s
    conn.set_progress_handler(lambda: time.monotonic() > deadline, 2000)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
    except sqlite3.OperationalError as err:
        if "interrupt" in str(err).lower():
            return CheckResult(None, False)
        raise
    finally:
        conn.set_progress_handler(None, 0)
    if rows == ["ok"]:
        return CheckResult(None, True)
    return CheckResult("; ".join(str(r) for r in rows[:2]), True)


def sqlite3_cli() -> Optional[str]:
    """The sqlite3 shell on PATH, if any."""
    return shutil.which("sqlite3")


# ----------------------------------------------------------------- reading


def _readable_from(conn: sqlite3.Connection, table: str, start: int) -> tuple[bool, Optional[int]]:
    """Whether a seek to rowid >= *start* works, and the rowid it finds."""
    try:
        row = conn.execute(
            f"SELECT rowid FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT 1", (start,)
        ).fetchone()
    except sqlite3.DatabaseError:
        return False, None
    return True, (None if row is None else int(row[0]))


def _next_readable(conn: sqlite3.Connection, table: str, after: int) -> Optional[int]:
    """The smallest start beyond *after* from which the table can be read again
    (exponential then binary search over rowids), or None."""
    step = 1
    while True:
        probe = min(after + step, _MAX_ROWID)
        if _readable_from(conn, table, probe)[0]:
            break
        if probe == _MAX_ROWID:
            return None
        step *= 2
    lo, hi = after + step // 2, probe  # a seek from lo failed (or lo == after), from hi it works
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _readable_from(conn, table, mid)[0]:
            hi = mid
        else:
            lo = mid
    return hi


def _scan_table(conn: sqlite3.Connection, table: str, cols: tuple[str, ...]) -> Iterator[tuple]:
    """Every row of *table* that can be read, in rowid order, skipping the
    rowid ranges behind pages that cannot (each failure moves past at least
    one rowid, so the scan always ends)."""
    start = _MIN_ROWID
    sql = f"SELECT {', '.join(cols)} FROM {table} WHERE rowid >= ? ORDER BY rowid"
    while True:
        try:
            for row in conn.execute(sql, (start,)):
                yield row
                if row[0] >= _MAX_ROWID:
                    return
                start = int(row[0]) + 1
            return
        except sqlite3.DatabaseError:
            pass
        ok, found = _readable_from(conn, table, start)
        if ok:  # the seek works: the row it finds is the one that cannot be read
            if found is None or found >= _MAX_ROWID:
                return
            start = found + 1
        else:
            nxt = _next_readable(conn, table, start)
            if nxt is None:
                return
            start = nxt


def _valid_conversation(row: tuple) -> Optional[tuple]:
    """The row as the 9 values _insert writes (uid None: the file predates uids, or it is unreadable;
    kind "chat" before schema 4)."""
    cid, title, model, system_prompt, params, created, updated = row[:7]
    uid = row[7] if len(row) > 7 and isinstance(row[7], str) and row[7] else None
    kind = row[8] if len(row) > 8 and row[8] in ("chat", "completion") else "chat"
    if not isinstance(cid, int) or not isinstance(title, str):
        return None
    if model is not None and not isinstance(model, str):
        return None
    if not isinstance(created, (int, float)) or not isinstance(updated, (int, float)):
        return None
    return (
        cid, title, model,
        system_prompt if isinstance(system_prompt, str) else "",
        params if isinstance(params, str) else "{}",
        float(created), float(updated), uid, kind,
    )


def _valid_message(row: tuple) -> Optional[tuple]:
    mid, cid, pos, role, content, status, stats, metadata, _owner, created, updated = row[:11]
    reasoning = row[11] if len(row) > 11 and isinstance(row[11], str) else ""
    if not all(isinstance(v, int) for v in (mid, cid, pos)):
        return None
    if role not in _ROLES or status not in _STATUSES or not isinstance(content, str):
        return None
    if not isinstance(created, (int, float)) or not isinstance(updated, (int, float)):
        return None
    return (
        mid, cid, pos, role, content,
        "interrupted" if status == "streaming" else status,
        stats if isinstance(stats, str) else None,
        metadata if isinstance(metadata, str) else "",
        float(created), float(updated), reasoning,
    )


def _conversation_columns(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    """The columns to read: with uid when the file has it (schema 2 on)."""
    try:
        names = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    except sqlite3.DatabaseError:
        names = set()
    cols = (*_CONV_COLS, "uid") if "uid" in names else _CONV_COLS
    return (*cols, "kind") if "uid" in names and "kind" in names else cols  # kind: schema 4 on


def _message_columns(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    """The columns to read: with reasoning when the file has it (schema 3 on)."""
    try:
        names = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    except sqlite3.DatabaseError:
        names = set()
    return (*_MSG_COLS, "reasoning") if "reasoning" in names else _MSG_COLS


def _read_into(conn: sqlite3.Connection, convs: dict, msgs: dict, tables: tuple[str, str]) -> None:
    for row in _scan_table(conn, tables[0], _conversation_columns(conn, tables[0])):
        good = _valid_conversation(row)
        if good is not None:
            convs.setdefault(good[0], good)
    for row in _scan_table(conn, tables[1], _message_columns(conn, tables[1])):
        good = _valid_message(row)
        if good is not None:
            msgs.setdefault(good[0], good)


def _read_lost_and_found(conn: sqlite3.Connection, convs: dict, msgs: dict) -> None:
    """Rows .recover could not place in a table, matched by shape."""
    try:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(lost_and_found)")]
        if "nfield" not in cols or "id" not in cols:
            return
        for row in conn.execute("SELECT * FROM lost_and_found"):
            rec = dict(zip(cols, row, strict=True))  # SELECT * gives one value per column
            values = [rec.get(f"c{i}") for i in range(int(rec["nfield"] or 0))]
            if rec["id"] is None or not values:
                continue
            values[0] = rec["id"]  # INTEGER PRIMARY KEY is stored as the rowid
            if len(values) in (len(_CONV_COLS), len(_CONV_COLS) + 1, len(_CONV_COLS) + 2):  # uid, kind
                good = _valid_conversation(tuple(values))
                if good is not None:
                    convs.setdefault(good[0], good)
            elif len(values) in (len(_MSG_COLS), len(_MSG_COLS) + 1):  # without or with reasoning
                good = _valid_message(tuple(values))
                if good is not None:
                    msgs.setdefault(good[0], good)
    except sqlite3.Error:
        return


def _cli_recover(cli: str, source: Path, work: Path, convs: dict, msgs: dict) -> bool:
    """Run ``sqlite3 source .recover`` into a scratch database and read it."""
    dump, out = work / "recover.sql", work / "recovered.sqlite3"
    deadline = time.monotonic() + CLI_TIMEOUT_S
    try:
        with open(dump, "wb") as fh:
            done = subprocess.run([cli, str(source), ".recover --ignore-freelist"], stdout=fh,
                                  stderr=subprocess.DEVNULL, timeout=CLI_TIMEOUT_S, check=False)
        if done.returncode != 0:
            return False  # e.g. a build without the page access .recover needs
        with open(dump, "rb") as fh:
            subprocess.run([cli, str(out)], stdin=fh, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=max(1.0, deadline - time.monotonic()), check=False)
        conn = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    except (OSError, subprocess.SubprocessError, sqlite3.Error):
        return False
    try:
        before = len(convs) + len(msgs)
        _read_into(conn, convs, msgs, ("conversations", "messages"))
        _read_lost_and_found(conn, convs, msgs)
        return len(convs) + len(msgs) > before
    finally:
        conn.close()


def _trust_file_size(copy: Path) -> None:
    """Make SQLite take a truncated copy's size from the file, not from its
    header (whose larger page count makes every query fail): the header's
    page count is only used while bytes 92-95 equal the change counter."""
    with open(copy, "r+b") as fh:
        header = fh.read(100)
        if len(header) == 100 and header[:16] == b"SQLite format 3\x00":
            fh.seek(92)
            fh.write(bytes(b ^ 0xFF for b in header[24:28]))


@contextlib.contextmanager
def _working_copy(source: Path) -> Iterator[tuple[Path, Path]]:
    """A private scratch folder beside *source* holding a copy of it and its
    -wal: reading may replay the log, and the original must stay byte for byte."""
    work = Path(tempfile.mkdtemp(prefix=".glmtui-salvage-", dir=source.parent))
    try:
        copy = work / "copy.sqlite3"
        shutil.copyfile(source, copy)
        _trust_file_size(copy)
        wal = source.with_name(source.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        yield work, copy
    finally:
        shutil.rmtree(work, ignore_errors=True)


def salvage(source: Path, target: sqlite3.Connection, *,
            cli: Optional[Callable[[], Optional[str]]] = None) -> Salvaged:
    """Copy what *source* (a damaged history, set aside) still holds into
    *target* (a new, empty history with the current schema). *cli* finds the
    sqlite3 shell (default :func:`sqlite3_cli`; None from it: row reads only)."""
    convs: dict[int, tuple] = {}
    msgs: dict[int, tuple] = {}
    method = "row reads"
    try:
        with _working_copy(source) as (work, copy):
            shell = (cli or sqlite3_cli)()
            if shell and _cli_recover(shell, copy, work, convs, msgs):
                method = "sqlite3 .recover + row reads"
            try:
                conn = sqlite3.connect(str(copy), isolation_level=None)
            except sqlite3.Error:
                conn = None
            if conn is not None:
                try:
                    _read_into(conn, convs, msgs, ("conversations", "messages"))
                finally:
                    conn.close()
    except OSError:
        pass  # no room for a copy: what was read so far is kept
    return _insert(target, convs, msgs, method)


def _placeholder(cid: int, rows: list[tuple]) -> tuple:
    first_user = next((m[4] for m in sorted(rows, key=lambda m: m[2]) if m[3] == "user" and m[4].strip()), "")
    line = first_user.strip().splitlines()[0][:60] if first_user.strip() else ""
    title = f"Recovered conversation: {line}" if line else f"Recovered conversation {cid}"
    return (cid, title, None, "", "{}", min(m[8] for m in rows), max(m[9] for m in rows), None, "chat")


def _insert(target: sqlite3.Connection, convs: dict, msgs: dict, method: str) -> Salvaged:
    orphans: dict[int, list[tuple]] = {}
    for m in msgs.values():
        if m[1] not in convs:
            orphans.setdefault(m[1], []).append(m)
    untitled = [_placeholder(cid, rows) for cid, rows in orphans.items()]
    target.execute("BEGIN IMMEDIATE")
    try:
        target.executemany(
            "INSERT OR IGNORE INTO conversations(id, title, model, system_prompt, params, created_at, updated_at,"
            " uid, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [*convs.values(), *untitled],
        )
        # the new file's triggers index every message inserted here
        inserted = 0
        for m in sorted(msgs.values()):
            cur = target.execute(
                "INSERT OR IGNORE INTO messages(id, conversation_id, position, role, content, status,"
                " stats, metadata, created_at, updated_at, reasoning) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                m,
            )
            inserted += cur.rowcount
        count = target.execute("SELECT count(*) FROM conversations").fetchone()[0]
    except BaseException:
        if target.in_transaction:
            target.execute("ROLLBACK")
        raise
    target.execute("COMMIT")
    return Salvaged(int(count), inserted, len(untitled), method)
