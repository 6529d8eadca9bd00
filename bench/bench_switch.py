"""Benchmark: the engine in a process of its own vs the in-process worker thread.

A native GLM whose greedy replies never stop (bench/harness.build_nonstop_glm, hidden 1024 and 8
layers by default) is loaded by both engines in this one run:

- switch: wall time from ``load(other mode)`` with a model loaded to ``Loaded``, alternating
  in-process / process, bf16 <-> int4 by default, per target mode. Before each process switch the
  bench waits until the spare process has finished its imports (the user reading the reply); that
  wait is reported apart, with the spawn time (spawn to imports done). One switch with no spare
  waiting (spare turned off) is measured too, its process a fork of the launcher, then a fresh interpreter.
- cancel: time from ``cancel()`` to ``Finished(cancelled)`` at the caller, mid-reply.
- stream: tokens/s of a greedy reply seen by the caller (first Token to Finished), both engines.
- memory (the unload check): in a fresh front-end process per engine, the resident memory of that
  process and all its children before the first load and after each unload; each cycle loads
  bf16, switches to int4, back to bf16 (a short reply after each load), then unloads. Three front
  ends: the in-process worker, an EngineProcess, and the TUI itself (GlmApp headless over its default
  engine process). Target: the process and TUI figures within 16 MiB of the one before the first
  load after every unload. ``--memory-only`` runs just this part.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from harness import LoadWatch, build_nonstop_glm, spread  # noqa: E402 - after the sys.path setup

MIB = 2**20
UNLOAD_TARGET = 16 * MIB  # glmtui's processes after an unload vs before the first load


class Waiter:
    """Listener: the events of each request; wait for its end."""

    def __init__(self):
        self.cond = threading.Condition()
        self.final: dict[int, object] = {}
        self.first_token: dict[int, float] = {}

    def __call__(self, event) -> None:
        from glmtui.engine.events import Failed, Finished, Loaded, Token, Unloaded

        with self.cond:
            if isinstance(event, Token) and event.request_id not in self.first_token:
                self.first_token[event.request_id] = time.perf_counter()
                self.cond.notify_all()
            if isinstance(event, (Loaded, Unloaded, Finished, Failed)):
                self.final[event.request_id] = (event, time.perf_counter())
                self.cond.notify_all()

    def wait(self, rid: int, timeout: float = 600.0):
        with self.cond:
            assert self.cond.wait_for(lambda: rid in self.final, timeout), f"request {rid} did not end"
            return self.final[rid]

    def wait_first_token(self, rid: int, timeout: float = 120.0) -> float:
        with self.cond:
            assert self.cond.wait_for(lambda: rid in self.first_token or rid in self.final, timeout)
            return self.first_token.get(rid, 0.0)


def timed_load(engine, waiter: Waiter, folder: Path, mode: str) -> float:
    started = time.perf_counter()
    event, at = waiter.wait(engine.load(str(folder), mode))
    assert type(event).__name__ == "Loaded", event
    return at - started


def wait_spare(engine, timeout: float = 300.0) -> float:
    """Wait until the engine's spare process is ready; seconds waited."""
    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        spare = engine._spare
        if spare is not None and spare.ready.is_set():
            return time.perf_counter() - started
        time.sleep(0.05)
    raise RuntimeError("no spare process became ready")


def median(values) -> float:
    return statistics.median(values)


def glmtui_rss() -> int:
    """Resident memory of this process and all its children (the engine processes) together."""
    import psutil

    me = psutil.Process()
    size = 0
    for proc in [me] + me.children(recursive=True):
        try:
            size += proc.memory_info().rss
        except psutil.Error:
            pass
    return size


def memory_run(kind: str, folder: str, cycles: int, modes: list[str]) -> None:
    """In a fresh front-end process: RSS of it and its children before the first load and after each unload
    (each cycle: load every mode of ``modes`` in turn, a short reply after each, then unload)."""
    if kind == "tui":
        return tui_memory_run(folder, cycles, modes)
    from glmtui.engine.events import ChatMessage, GenerationParams

    total = glmtui_rss
    waiter = Waiter()
    if kind == "process":
        from glmtui.engine.process import EngineProcess

        engine = EngineProcess(waiter).start()
    else:
        from glmtui.engine.worker import InferenceWorker

        engine = InferenceWorker(waiter).start()
    time.sleep(0.5)
    before = total()
    after = []
    for _ in range(cycles):
        for mode in modes:
            timed_load(engine, waiter, Path(folder), mode)
            waiter.wait(engine.generate([ChatMessage("user", "hi")], GenerationParams(max_new_tokens=16,
                                                                                       temperature=0.0)))
        waiter.wait(engine.unload())
        time.sleep(0.5)
        after.append(total())
    print(json.dumps({"kind": kind, "before": before, "after": after,
                      "torch_here": "torch" in sys.modules}), flush=True)
    engine.shutdown()


def tui_memory_run(folder: str, cycles: int, modes: list[str]) -> None:
    """memory_run through the TUI (headless GlmApp over its default engine); the replies are asked of its
    engine directly, so the figures are the model's and not a growing chat's."""
    import asyncio

    from glmtui.engine.events import ChatMessage, Finished, GenerationParams
    from glmtui.ui.app import GlmApp

    async def run() -> dict:
        app = GlmApp(mode=modes[0], device="cpu")
        async with app.run_test(size=(160, 48)) as pilot:
            async def until(condition, what: str, timeout: float = 600.0) -> None:
                deadline = time.monotonic() + timeout
                while not condition():
                    assert time.monotonic() < deadline, f"timed out waiting for {what}"
                    await pilot.pause(0.05)

            await until(lambda: app.monitor_pane.snapshot is not None, "a first sample")
            await pilot.pause(1.0)
            before, after = glmtui_rss(), []
            for _ in range(cycles):
                for mode in modes:
                    app.request_load(folder, mode)
                    await until(lambda m=mode: app.loaded is not None and app.loaded.mode == m, f"the {mode} load")
                    done = threading.Event()
                    app.engine.generate([ChatMessage("user", "hi")], GenerationParams(max_new_tokens=16,
                                                                                       temperature=0.0),
                                        sink=lambda e, done=done: done.set() if isinstance(e, Finished) else None)
                    await until(done.is_set, "a reply")
                app.action_unload()
                await until(lambda: app.loaded is None, "the unload")
                await pilot.pause(0.5)
                after.append(glmtui_rss())
            return {"kind": "tui", "before": before, "after": after, "torch_here": "torch" in sys.modules,
                    "engine": type(app.engine).__name__, "note": app.model.unloaded_note}

    print(json.dumps(asyncio.run(run())), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--modes", default="bf16,int4", help="the switch alternates between these")
    parser.add_argument("--cycles", type=int, default=3, help="switch cycles (each mode once per cycle)")
    parser.add_argument("--cancels", type=int, default=5)
    parser.add_argument("--stream-tokens", type=int, default=200)
    parser.add_argument("--stream-rounds", type=int, default=5)
    parser.add_argument("--memory-cycles", type=int, default=5)
    parser.add_argument("--memory-modes", default="bf16,int4,bf16", help="loaded in turn in each memory cycle")
    parser.add_argument("--memory-only", action="store_true", help="run only the memory (unload) check")
    parser.add_argument("--memory-run", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    modes = args.modes.split(",")
    if args.memory_run:
        memory_run(args.memory_run[0], args.memory_run[1], args.memory_cycles, args.memory_modes.split(","))
        return 0

    from glmtui.engine.events import ChatMessage, GenerationParams
    from glmtui.engine.process import EngineProcess
    from glmtui.engine.worker import InferenceWorker

    watch = LoadWatch()
    print(watch.sample("before"), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_nonstop_glm(Path(tmp) / "glm", args.hidden, args.layers, context=4096)
        print(f"model: native GLM hidden {args.hidden}, {args.layers} layers, CPU; switch {' <-> '.join(modes)}",
              flush=True)
        if args.memory_only:
            met = memory_check(args, folder, tmp)
            print(watch.sample("after"))
            print(watch.verdict())
            print(f"\nHEADLINE unload check: {'met' if met else 'MISSED'}{' [under load]' if watch.under_load else ''}")
            return 0 if met is not None else 1
        w_in, w_proc = Waiter(), Waiter()
        inproc = InferenceWorker(w_in).start()
        proc = EngineProcess(w_proc, log_dir=Path(tmp) / "logs").start()
        try:
            first_in = timed_load(inproc, w_in, folder, modes[0])
            first_proc = timed_load(proc, w_proc, folder, modes[0])
            print(f"first load ({modes[0]}): in-process {first_in:.2f} s (torch already imported by the bench), "
                  f"process {first_proc:.2f} s (spawn + imports + load)", flush=True)

            switch_in = {mode: [] for mode in modes}
            switch_proc = {mode: [] for mode in modes}
            spare_waits, spawns = [], []
            for _ in range(args.cycles):
                for mode in modes[1:] + modes[:1]:
                    switch_in[mode].append(timed_load(inproc, w_in, folder, mode))
                    spare_waits.append(wait_spare(proc))
                    spare = proc._spare
                    spawns.append(spare.ready_at - spare.spawned_at)
                    switch_proc[mode].append(timed_load(proc, w_proc, folder, mode))
            for mode in modes:
                a, b = switch_in[mode], switch_proc[mode]
                print(f"switch to {mode}, median of {len(a)}: in-process {median(a):.3f} s {spread(a)}, "
                      f"process {median(b):.3f} s {spread(b)}; process / in-process {median(b) / median(a):.2f}",
                      flush=True)
            print(f"spare process: spawn to imports done (on idle CPU time) {median(spawns):.2f} s {spread(spawns)}; "
                  f"waited for it after a switch: {median(spare_waits):.2f} s median", flush=True)

            # no spare waiting: each start a fork of the launcher (ready since the spares above), or a fresh
            # interpreter that imports torch and transformers itself
            for label, use_launcher in (("a fork of the launcher", True), ("a fresh interpreter", False)):
                w_cold = Waiter()
                cold = EngineProcess(w_cold, keep_spare=False, log_dir=Path(tmp) / "logs",
                                     use_launcher=use_launcher).start()
                timed_load(cold, w_cold, folder, modes[0])
                cold_switch = timed_load(cold, w_cold, folder, modes[1 % len(modes)])
                cold.shutdown()
                print(f"switch with no spare ready, {label} (spawn + imports + load): {cold_switch:.2f} s",
                      flush=True)

            long = GenerationParams(max_new_tokens=4000, temperature=0.0)
            hello = [ChatMessage("user", "hello")]
            lat = {"in-process": [], "process": []}
            for _ in range(args.cancels):
                for name, engine, waiter in (("in-process", inproc, w_in), ("process", proc, w_proc)):
                    rid = engine.generate(hello, long)
                    waiter.wait_first_token(rid)
                    time.sleep(0.2)
                    sent = time.perf_counter()
                    engine.cancel(rid)
                    event, at = waiter.wait(rid)
                    assert getattr(event, "finish_reason", None) == "cancelled", event
                    lat[name].append(at - sent)
            print("cancel to Finished, median of %d: in-process %.1f ms %s, process %.1f ms %s" % (
                args.cancels, median(lat["in-process"]) * 1000, spread([v * 1000 for v in lat["in-process"]]),
                median(lat["process"]) * 1000, spread([v * 1000 for v in lat["process"]])), flush=True)

            wait_spare(proc)  # steady state: no spare importing beside the replies
            rates = {"in-process": [], "process": []}
            params = GenerationParams(max_new_tokens=args.stream_tokens, temperature=0.0)
            for _ in range(args.stream_rounds):
                for name, engine, waiter in (("in-process", inproc, w_in), ("process", proc, w_proc)):
                    rid = engine.generate(hello, params)
                    first = waiter.wait_first_token(rid)
                    event, at = waiter.wait(rid)
                    rates[name].append((event.completion_tokens - 1) / (at - first))
            tin, tproc = median(rates["in-process"]), median(rates["process"])
            print(f"stream, caller-side tok/s (median of {args.stream_rounds}): in-process {tin:.1f} "
                  f"{spread(rates['in-process'])}, process {tproc:.1f} {spread(rates['process'])}; "
                  f"process / in-process {tproc / tin:.3f}", flush=True)
        finally:
            inproc.shutdown()
            proc.shutdown()

        met = memory_check(args, folder, tmp)
        if met is None:
            return 1
    print(watch.sample("after"))
    print(watch.verdict())
    print(f"\nHEADLINE process / in-process streaming tok/s {tproc / tin:.3f}; unload check (glmtui's processes "
          f"within {UNLOAD_TARGET // MIB} MiB of the figure before the first load after every unload): "
          f"{'met' if met else 'MISSED'}{' [under load]' if watch.under_load else ''}")
    return 0


def memory_check(args, folder: Path, tmp: str) -> "bool | None":
    """The memory runs, each in a fresh front-end process; True when the process and TUI front ends came
    back within UNLOAD_TARGET after every unload (None when a run failed)."""
    met = True
    sequence = args.memory_modes.replace(",", " -> ")
    for kind in ("in-process", "process", "tui"):
        out = subprocess.run([sys.executable, __file__, "--memory-run", kind.replace("in-process", "inproc"),
                              str(folder), "--memory-cycles", str(args.memory_cycles),
                              "--memory-modes", args.memory_modes],
                             capture_output=True, text=True, cwd=ROOT,
                             env=dict(os.environ, GLMTUI_HOME=str(Path(tmp) / f"home-{kind}")))
        if out.returncode != 0:
            print(f"memory run ({kind}) failed:\n{out.stderr[-2000:]}")
            return None
        found = json.loads(out.stdout.strip().splitlines()[-1])
        deltas = [a - found["before"] for a in found["after"]]
        within = all(abs(d) <= UNLOAD_TARGET for d in deltas)
        if kind != "in-process":
            met = met and within
        print(f"memory of the front end and its children, {kind} ({sequence}, then unload; "
              f"{args.memory_cycles} cycles): {found['before'] / MIB:.1f} MiB before the first load; after each "
              f"unload, over that: {', '.join(f'{d / MIB:+.1f}' for d in deltas)} MiB — "
              f"{'within' if within else 'NOT within'} {UNLOAD_TARGET // MIB} MiB every time "
              f"(torch in the front end: {found['torch_here']})", flush=True)
    return met


if __name__ == "__main__":
    sys.exit(main())
