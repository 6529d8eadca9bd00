"""Benchmark glmtui.store on a large history.

Builds a history with --conversations conversations and --messages messages
(one of them --long messages long) in a temporary folder through the store's
own schema (HistoryStore.import_many), then times: open, first page of the
conversation list, full-text searches (English, Chinese of 3+ characters,
two-character Chinese — which cannot use the trigram index and is scanned —
and a term with no hits), and loading the long conversation.

Absolute times are noise on shared machines, so every figure is also printed
as a ratio against baselines measured in the same run: the same operation on
a small history (--small-* sizes) and a raw ``SELECT 1`` round trip.

    python bench/bench_history.py                         # 10,000 / 1,000,000
    python bench/bench_history.py --conversations 500 --messages 50000   # quick
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glmtui.store import HistoryStore  # after the sys.path setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import LoadWatch  # after the sys.path setup

TARGET_MS = 100.0

_SYLLABLES = "ka lo mi ne ra to shu vel dan tor ben ix qua zel mor pin sa ter lun gra fo wen dri op".split()
_COMMON = (
    "the model answer question python code function data value return list because "
    "please explain example memory token layer output input train quick brown fox"
).split()
# Chinese filler avoids the characters of the planted words below.
_HANZI = "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多"
PLANTED = {
    # term: fraction of messages that contain it
    "hyperparameter": 0.01,
    "zanzibar": 0.00001,
    "北京烤鸭": 0.001,
    "天气": 0.01,
    "熊猫": 0.00001,
}
QUERIES = [  # (label, query): labels stay ASCII so the table lines up
    ("search en 'hyperparameter' (1%)", "hyperparameter"),
    ("search en 'zanzibar' (rare)", "zanzibar"),
    ("search en two common words", "model memory"),
    ("search en no hit", "qwertyuiop"),
    ("search zh 4 chars (0.1%)", "北京烤鸭"),
    ("search zh 2 chars (1%)", "天气"),
    ("search zh 2 chars (rare)", "熊猫"),
    ("search zh 1 char (rare, full scan)", "猫"),
]


def _text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(2, 12)):
        if rng.random() < 0.3:
            parts.append("".join(rng.choice(_HANZI) for _ in range(rng.randint(4, 16))) + "。")
        else:
            words = [
                rng.choice(_COMMON) if rng.random() < 0.5 else "".join(rng.sample(_SYLLABLES, rng.randint(1, 3)))
                for _ in range(rng.randint(3, 9))
            ]
            parts.append(" ".join(words) + ".")
    for term, frac in PLANTED.items():
        if rng.random() < frac:
            parts.insert(rng.randrange(len(parts) + 1), term)
    return " ".join(parts)


def generate(n_conv: int, n_msg: int, long_len: int, seed: int = 7) -> Iterator[dict]:
    rng = random.Random(seed)
    long_len = min(long_len, n_msg)
    rest = n_msg - long_len
    per = [rest // max(n_conv - 1, 1)] * max(n_conv - 1, 0)
    for i in range(rest - sum(per)):
        per[i % len(per)] += 1
    sizes = per[: len(per) // 2] + [long_len] + per[len(per) // 2 :]
    t0 = 1_600_000_000.0
    for i, size in enumerate(sizes):
        created = t0 + i * 3600
        yield {
            "title": f"conversation {i} " + " ".join(rng.sample(_COMMON, 2)),
            "model": "chatglm3-6b",
            "system_prompt": "",
            "params": {"temperature": 0.8, "top_p": 0.8},
            "created_at": created,
            "updated_at": created + size * 10,
            "messages": [
                {
                    "role": "user" if j % 2 == 0 else "assistant",
                    "content": _text(rng),
                    "created_at": created + j * 10,
                    "stats": None if j % 2 == 0 else {"completion_tokens": 100, "tokens_per_s": 30.0},
                }
                for j in range(size)
            ],
        }


def build(path: Path, n_conv: int, n_msg: int, long_len: int) -> tuple[int, float]:
    t = time.perf_counter()
    with HistoryStore.open(path) as s:
        ids = s.import_many(generate(n_conv, n_msg, long_len), batch_size=100)
    elapsed = time.perf_counter() - t
    long_id = ids[(len(ids) - 1) // 2]  # where generate() put the long one
    return long_id, elapsed


def timeit(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(first call, median of the following calls) in milliseconds."""
    times = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times[0], statistics.median(times[1:])


def measure(path: Path, long_id: int, repeat: int) -> dict[str, tuple[float, float, int]]:
    out: dict[str, tuple[float, float, int]] = {}

    def do_open() -> None:
        HistoryStore.open(path).close()

    first, med = timeit(do_open, repeat)
    out["open"] = (first, med, 0)
    s = HistoryStore.open(path)
    try:
        raw = s._conn  # the store's own connection, for the round-trip baseline
        first, med = timeit(lambda: raw.execute("SELECT 1").fetchone(), repeat * 20)
        out["SELECT 1 round trip"] = (first, med, 1)
        first, med = timeit(lambda: s.list_conversations(limit=50), repeat)
        out["list first page (50)"] = (first, med, len(s.list_conversations(limit=50)))
        for label, q in QUERIES:
            first, med = timeit(lambda q=q: s.search(q, limit=50), repeat)
            out[label] = (first, med, len(s.search(q, limit=50)))
        n_long = len(s.messages(long_id))
        first, med = timeit(lambda: s.messages(long_id), repeat)
        out["load long conversation"] = (first, med, n_long)
    finally:
        s.close()
    return out


def main(argv: list[str] | None = None) -> int:
    watch = LoadWatch()
    print(watch.sample("before"), flush=True)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--long", type=int, default=2_000, help="messages in the long conversation")
    ap.add_argument("--small-conversations", type=int, default=100)
    ap.add_argument("--small-messages", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", type=Path, help="build here (default: a temporary folder, removed after)")
    args = ap.parse_args(argv)

    base = args.dir or Path(tempfile.mkdtemp(prefix="glmtui-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        small = base / "small.sqlite3"
        big = base / "big.sqlite3"
        small_long, t_small = build(small, args.small_conversations, args.small_messages,
                                    min(args.long, args.small_messages // 2))
        print(f"built small: {args.small_conversations:,} conversations, {args.small_messages:,} messages "
              f"in {t_small:.1f} s")
        big_long, t_big = build(big, args.conversations, args.messages, args.long)
        size_mb = sum(p.stat().st_size for p in base.glob("big.sqlite3*")) / 1e6
        print(
            f"built big:   {args.conversations:,} conversations, {args.messages:,} messages in {t_big:.1f} s"
            f" ({args.messages / t_big:,.0f} msg/s), {size_mb:,.0f} MB"
        )
        res_small = measure(small, small_long, args.repeat)
        res_big = measure(big, big_long, args.repeat)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)

    rt = res_big["SELECT 1 round trip"][1]
    print(f"\nsqlite {sqlite3.sqlite_version}; median of {args.repeat} runs after a first one; "
          f"target < {TARGET_MS:.0f} ms")
    head = (f"{'operation':36} {'hits':>5} {'first ms':>9} {'median ms':>10} {'small ms':>9} {'x small':>8} "
            f"{'x SELECT1':>10}  ok")
    print(head)
    print("-" * len(head))
    worst = 0.0
    for label, (first, med, hits) in res_big.items():
        s_med = res_small[label][1]
        ratio_small = med / s_med if s_med > 0 else float("nan")
        ratio_rt = med / rt if rt > 0 else float("nan")
        ok = "" if label.startswith("SELECT") else ("yes" if max(first, med) < TARGET_MS else "NO")
        if not label.startswith("SELECT"):
            worst = max(worst, med)
        print(f"{label:36} {hits:>5} {first:>9.2f} {med:>10.2f} {s_med:>9.2f} {ratio_small:>8.1f} "
              f"{ratio_rt:>10.0f}  {ok}")
    print(watch.sample("after"))
    print(watch.verdict())
    print(f"\nHEADLINE slowest operation on the big file {worst:.1f} ms (median; target < {TARGET_MS:.0f} ms: "
          f"{'met' if worst < TARGET_MS else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
