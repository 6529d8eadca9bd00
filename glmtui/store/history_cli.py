"""``glmtui history export FILE`` and ``glmtui history import FILE`` (``-``: stdout / stdin).

Messages go to stderr (an export to stdout stays clean); every failure is one
line and exit code 1, and an import that fails adds nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from glmtui.store.errors import HistoryError
from glmtui.store.exchange import ExchangeError
from glmtui.store.history import HistoryStore


def run_history(args: argparse.Namespace) -> int:
    from glmtui.config import default_paths

    def fail(message: str) -> int:
        print(f"glmtui history {args.action}: {message}", file=sys.stderr)
        return 1

    try:
        text = _read_input(args.file) if args.action == "import" else None
    except OSError as err:
        return fail(f"cannot read {args.file}: {err.strerror or err}")
    except UnicodeDecodeError:
        return fail(f"{args.file} is not UTF-8 text")
    try:
        store = HistoryStore.open(default_paths().history_db)
    except HistoryError as err:
        return fail(str(err))
    with store:
        if store.warning:
            print(store.warning, file=sys.stderr)
        try:
            if args.action == "export":
                count = _export(store, args.file)
                where = "stdout" if args.file == "-" else args.file
                print(f"Exported {count} conversation{'s' if count != 1 else ''} to {where}.", file=sys.stderr)
                return 0
            if store.unsaved:
                return fail(f"nothing imported: {store.unsaved}")
            assert text is not None
            added, skipped = store.import_history(text)
        except ExchangeError as err:
            return fail(f"{args.file}: {err}; nothing was imported")
        except HistoryError as err:
            return fail(str(err))
        except OSError as err:
            return fail(f"cannot write {args.file}: {err.strerror or err}")
    note = f" ({skipped} already in the history, skipped)" if skipped else ""
    print(f"Imported {added} conversation{'s' if added != 1 else ''}{note}.", file=sys.stderr)
    return 0


def _read_input(name: str) -> str:
    if name == "-":
        return sys.stdin.buffer.read().decode("utf-8")
    return Path(name).read_bytes().decode("utf-8")


def _export(store: HistoryStore, name: str) -> int:
    if name == "-":
        return store.export_history(sys.stdout)
    # a private temporary file beside the target, renamed over it once complete
    target = Path(name)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            count = store.export_history(fh)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
