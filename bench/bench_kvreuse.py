"""Benchmark: time to first token of turn N vs turn 1 of one conversation, KV reuse on and off.

A native GLM whose greedy replies never stop (harness.build_nonstop_glm) is loaded by two
in-process workers, one keeping the conversation's KV cache between turns and one prefilling the
whole conversation every turn. Each round runs the same conversation (``--turns`` user messages of
``--words`` words, greedy replies of ``--max-new`` tokens) on both, in alternating order. TTFT is
the worker's own (request start to first token: prompt building and prefill), decode tok/s the
reply's tokens after the first over the time after it (no regression with reuse on expected).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from harness import LoadWatch, alternating, build_nonstop_glm, spread  # noqa: E402 - after the sys.path setup

WORDS = ("memory bandwidth kernel cache token prefill decode layer tensor model batch stream "
         "latency compile graph static dynamic weight quant attention head").split()


def user_text(round_no: int, turn: int, words: int) -> str:
    # Different in every round and turn, so no turn is served by another round's cache.
    return f"Round {round_no} question {turn}: " + " ".join(
        WORDS[(round_no * 7 + turn * 3 + i) % len(WORDS)] for i in range(words)
    )


def conversation(worker, log, round_no: int, turns: int, words: int, max_new: int) -> list:
    from glmtui.engine.events import ChatMessage, Finished, GenerationParams

    params = GenerationParams(max_new_tokens=max_new, temperature=0.0)
    history = []
    results = []
    for turn in range(1, turns + 1):
        history.append(ChatMessage("user", user_text(round_no, turn, words)))
        done = log.wait(worker.generate(history, params), timeout=600)
        assert isinstance(done, Finished), done
        results.append(done)
        history.append(ChatMessage("assistant", done.text))
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--words", type=int, default=120, help="words per user message")
    parser.add_argument("--max-new", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from engine_helpers import EventLog
    from glmtui.engine.events import Loaded
    from glmtui.engine.worker import InferenceWorker

    watch = LoadWatch()
    print(watch.sample("before"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_nonstop_glm(Path(tmp) / "glm", args.hidden, args.layers, context=8192)
        workers = {}
        for name, reuse in (("reuse on", True), ("reuse off", False)):
            log = EventLog()
            w = InferenceWorker(log, kv_reuse=reuse, compiled_decode=False).start()
            assert isinstance(log.wait(w.load(str(folder), "fp32"), timeout=600), Loaded)
            conversation(w, log, -1, 2, args.words, args.max_new)  # warm-up: first calls allocate and dispatch
            workers[name] = (w, log)
        figures = {name: {"ttft1": [], "ttftN": [], "ratio": [], "tps": [], "cached": [], "prompt": []}
                   for name in workers}
        for round_no, order in enumerate(alternating(args.rounds, workers)):
            for name in order:
                w, log = workers[name]
                runs = conversation(w, log, round_no, args.turns, args.words, args.max_new)
                first, last = runs[0], runs[-1]
                f = figures[name]
                f["ttft1"].append(first.time_to_first_token * 1000)
                f["ttftN"].append(last.time_to_first_token * 1000)
                f["ratio"].append(last.time_to_first_token / first.time_to_first_token)
                f["tps"].append(statistics.median(r.tokens_per_second for r in runs if r.tokens_per_second))
                f["cached"].append(last.cached_tokens)
                f["prompt"].append(last.prompt_tokens)
                print(f"round {round_no + 1} {name:9}: turn 1 TTFT {f['ttft1'][-1]:.1f} ms, turn {args.turns} "
                      f"TTFT {f['ttftN'][-1]:.1f} ms (prompt {last.prompt_tokens} tokens, {last.cached_tokens} "
                      f"cached), ratio {f['ratio'][-1]:.2f}, decode {f['tps'][-1]:.1f} tok/s", flush=True)
        for w, _ in workers.values():
            w.shutdown()
    print(watch.sample("after"))
    print(watch.verdict())
    print()
    n = args.turns
    print(f"native GLM hidden {args.hidden}, {args.layers} layers, fp32; {args.turns} turns of {args.words} words + "
          f"{args.max_new}-token greedy replies; {args.rounds} alternating rounds, median (min-max)")
    print(f"| way | turn 1 TTFT ms | turn {n} TTFT ms | turn {n} / turn 1 | turn {n} prompt tokens | cached "
          "| decode tok/s |")
    print("|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {spread(f['ttft1'])} | {spread(f['ttftN'])} | {spread(f['ratio'])} | "
              f"{statistics.median(f['prompt']):.0f} | {statistics.median(f['cached']):.0f} | {spread(f['tps'])} |")
    on, off = figures["reuse on"], figures["reuse off"]
    print(f"\nHEADLINE turn {n} / turn 1 TTFT: reuse on {statistics.median(on['ratio']):.2f}, "
          f"off {statistics.median(off['ratio']):.2f}; turn {n} TTFT on/off "
          f"{statistics.median(on['ttftN']) / statistics.median(off['ttftN']):.2f}; decode tok/s on/off "
          f"{statistics.median(on['tps']) / statistics.median(off['tps']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
