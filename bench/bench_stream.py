"""Benchmark 1: streaming overhead — a reply through the chat UI (over its engine process) vs plain ``generate``.

A native GLM small enough to build here but big enough that the model's own
time dominates, as a real one's would (hidden 512, 4 layers by default), is
built offline with tests/tiny_models.py. The same greedy reply (same prompt,
same number of tokens) is produced four ways, in rotating order:

* ui     — the real GlmApp, headless (``App.run_test``), over its default engine (an
           EngineProcess: the model in a process of its own), real history
           file: the clock runs from pressing Enter in the prompt (Pilot) to the
           first screen refresh after the reply's Finished was handled (its
           final full Markdown update included). TTFT: Enter to the first
           refresh that lays out the reply's first Markdown block. The spare
           process the engine starts while idle has finished its imports first.
* engine — an EngineProcess alone: submit to the Finished event (TTFT: to the
           first Token event): the cost of the process boundary without the UI.
* worker — glmtui's InferenceWorker (a thread of this process) alone, the same way.
* plain  — ``model.generate`` on the same loaded model type, same prompt ids,
           ``max_new_tokens =`` the UI reply's token count and nothing else the
           other ways do not get (TTFT: to the first new token, via a streamer
           that only notes the time).
* serve  — only with ``--serve``: ``glmtui serve`` in a process of its own, driven by the
           RemoteEngine over its OpenAI API (SSE), the other IPC issue 13 weighs against the
           engine process's pipe.

The UI reply's length is measured first (a calibration run, not counted); with the
stop tokens' output rows zeroed (see ``build_model``) it is the UI's max new tokens.
Each of ``--reps`` rounds runs every way once, in an order that rotates from round to round
(so no way always runs first or last); ui and plain always run next to each other, in
alternating order, so each round gives one paired ratio ui / plain from neighbouring reps.
Prints tokens/s each way (medians), the ratios against plain, the median of the per-round
paired ratios with their spread (quartiles, min-max), TTFT each way, the machine's load before
and after, and the headline last: the median paired ui/plain ratio (target >= 0.97). Headless
Textual still lays out and composites every frame; only the write to a terminal is skipped.
``--threads N`` gives every side N torch threads: this process's torch, and the engine
processes' through OMP_NUM_THREADS (they read it when they import torch).

Pinning (``--pin``, on by default with ``--threads 1`` where two CPUs are allowed): each side's
model computation gets one core of its own, the same core every way, and whatever else a way
runs gets the other: plain and worker run this whole process on the model core; engine and
serve put their process on the model core and this process (which only waits for events) on
the other; ui puts the app's engine process on the model core and the UI process (this one)
on the other. Every thread of a process is pinned (Linux affinity is per thread), again before
each rep. The bench prints what it pinned; ``--no-pin`` leaves the scheduler free.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import LoadWatch, build_nonstop_glm, end_run, hook_generation_events, type_prompt  # noqa: E402 - after the sys.path setup

PROMPT = "Tell me about GPUs and memory."


def build_model(dest: Path, hidden: int, layers: int) -> Path:
    return build_nonstop_glm(dest, hidden, layers)


# ---------------------------------------------------------------- the UI


async def ui_run(folder: Path, prompt: str, max_new: int, size=(120, 40), timeout: float = 600.0,
                 profile: bool = False, endpoint: Optional[str] = None,
                 before_enter: Optional[Callable[[object], None]] = None) -> dict:
    """One reply through the real app; returns tokens, seconds (Enter -> final paint), ttft, text.

    With ``profile``, the UI thread is sampled (pyinstrument) from Enter to the final paint and
    ``result["profile"]`` holds the report; the thread's CPU seconds are in ``result["ui_cpu"]``.
    With ``endpoint``, the app talks to that OpenAI-compatible server (``glmtui serve``) instead of
    running the model in its own engine process. ``before_enter(engine)`` runs once the app is ready,
    just before Enter (the bench pins the engine's process there).
    """
    from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Token
    from glmtui.ui.app import GlmApp
    from glmtui.ui.chat_text import visible

    app = GlmApp(model=None if endpoint else str(folder), mode="fp32", device="cpu", endpoint=endpoint,
                 default_params={"temperature": 0.0, "max_new_tokens": max_new})
    async with app.run_test(size=size) as pilot:
        deadline = time.monotonic() + timeout
        while app.loaded is None:
            assert time.monotonic() < deadline, "model did not load"
            await pilot.pause(0.05)
        # warm the worker's generate (first-call costs) outside the chat: the app ignores foreign request ids
        warm = threading.Event()
        app.engine.generate([ChatMessage("user", prompt)], GenerationParams(max_new_tokens=8, temperature=0.0),
                            sink=lambda e: warm.set() if isinstance(e, Finished) else None)
        while not warm.is_set():
            await pilot.pause(0.02)
        await pilot.pause(0.2)
        await wait_for_spare(pilot, app.engine, deadline)

        chat = app.chat_pane
        await type_prompt(pilot, chat, prompt)
        if before_enter is not None:
            before_enter(app.engine)

        marks: dict[str, float] = {}
        done = asyncio.Event()

        def after(event, now: float) -> None:
            if isinstance(event, Token) and "token" not in marks:
                marks["token"] = now
            elif isinstance(event, Finished):
                marks["finished"] = now

        hook_generation_events(chat, after=after)
        screen = app.screen
        composite = screen._compositor_refresh

        def compositor_refresh() -> None:
            composite()
            now = time.perf_counter()
            if "first_paint" not in marks and "token" in marks and chat.turns:
                # the engine is asked before the turns are shown: its first tokens may wait for the reply's widget
                reply = chat.turns[-1]
                if reply.role == "assistant" and reply.widget is not None and reply.widget.markdown.children:
                    marks["first_paint"] = now
            if "finished" in marks and "final_paint" not in marks:
                marks["final_paint"] = now
                done.set()

        screen._compositor_refresh = compositor_refresh
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.001, async_mode="disabled")
            profiler.start()
        cpu, process_cpu, engine_cpu = time.thread_time(), time.process_time(), child_cpu(app.engine)
        start = time.perf_counter()
        await pilot.press("enter")
        await asyncio.wait_for(done.wait(), timeout)
        cpu = time.thread_time() - cpu
        process_cpu, engine_cpu = time.process_time() - process_cpu, child_cpu(app.engine) - engine_cpu
        if profiler is not None:
            profiler.stop()
        reply = chat.turns[-1]
        assert reply.status == "complete", reply.status
        assert reply.widget.markdown.source == visible(reply.content)
        result = {
            "tokens": reply.stats["completion_tokens"],
            "seconds": marks["final_paint"] - start,
            "ttft": marks.get("first_paint", marks["final_paint"]) - start,
            "text": reply.content,
            "ui_cpu": cpu,
            "ui_process_cpu": process_cpu,
            "engine_cpu": engine_cpu,
            "marks": {"enter": start, **marks},
            "worker_seconds": reply.stats["total_s"],
        }
        if profiler is not None:
            result["profile"] = profiler.output_text(unicode=True, color=False, show_all=True)
        screen._compositor_refresh = composite
        await end_run(pilot, app)
    return result


def child_cpu(engine) -> float:
    """CPU seconds (user + system) the engine's model process has used so far (0 where there is none)."""
    import psutil

    pid = getattr(engine, "pid", None)
    try:
        times = psutil.Process(pid).cpu_times() if pid else None
    except psutil.Error:
        times = None
    return times.user + times.system if times else 0.0


async def wait_for_spare(pilot, engine, deadline: float) -> None:
    """An engine process starts a spare process once idle a second; its imports (on idle CPU time)
    would still share the machine with the measured reply, so wait until they are done."""
    if not getattr(engine, "_keep_spare", False):
        return
    while True:
        spare = engine._spare
        if spare is not None and spare.ready.is_set():
            return
        assert time.monotonic() < deadline, "no spare process became ready"
        await pilot.pause(0.1)


# ---------------------------------------------------------------- an engine alone


class WorkerRunner:
    """An engine without a UI: ``kind`` "worker" (InferenceWorker, this process) or "engine" (EngineProcess)."""

    def __init__(self, folder: Path, kind: str = "worker"):
        from glmtui.engine.events import Failed, Finished, Loaded, Token

        self._token, self._finished, self._failed = Token, Finished, Failed
        if kind == "engine":
            from glmtui.engine.process import EngineProcess

            self.worker = EngineProcess(keep_spare=False).start()  # never switches: no spare wanted
        else:
            from glmtui.engine.worker import InferenceWorker

            self.worker = InferenceWorker().start()
        self._marks: dict = {}
        self._done = threading.Event()
        outcome: list = []
        ready = threading.Event()

        def on_load(event) -> None:
            if isinstance(event, (Loaded, Failed)):
                outcome.append(event)
                ready.set()

        self.worker.load(str(folder), "fp32", "cpu", sink=on_load)
        assert ready.wait(600) and isinstance(outcome[0], Loaded), outcome

    def _sink(self, event) -> None:
        now = time.perf_counter()
        if isinstance(event, self._token) and "token" not in self._marks:
            self._marks["token"] = now
        elif isinstance(event, self._finished):
            self._marks["finished"] = now
            self._marks["event"] = event
            self._done.set()
        elif isinstance(event, self._failed):
            self._marks["event"] = event
            self._done.set()

    def run(self, prompt: str, max_new: int) -> dict:
        from glmtui.engine.events import ChatMessage, GenerationParams

        self._marks, self._done = {}, threading.Event()
        engine_cpu = child_cpu(self.worker)
        start = time.perf_counter()
        self.worker.generate([ChatMessage("user", prompt)], GenerationParams(max_new_tokens=max_new, temperature=0.0),
                             sink=self._sink)
        assert self._done.wait(600)
        event = self._marks["event"]
        assert isinstance(event, self._finished), event
        return {"tokens": event.completion_tokens, "seconds": self._marks["finished"] - start,
                "ttft": self._marks["token"] - start, "text": event.text, "worker_seconds": event.total_seconds,
                "engine_cpu": child_cpu(self.worker) - engine_cpu}

    def close(self) -> None:
        self.worker.shutdown()


class ServeRunner(WorkerRunner):
    """The other IPC issue 13 weighs: ``glmtui serve`` in a process of its own, driven over its OpenAI API
    by the RemoteEngine (SSE), against the engine process's pipe."""

    def __init__(self, folder: Path):
        import subprocess
        import urllib.request

        from glmtui.engine.events import Failed, Finished, Token
        from glmtui.engine.remote import RemoteEngine

        self._token, self._finished, self._failed = Token, Finished, Failed
        port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "glmtui.cli", "serve", "--model", str(folder), "--mode", "fp32", "--device", "cpu",
             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 600
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("glmtui serve did not come up")
            time.sleep(0.2)
        self.worker = RemoteEngine(f"http://127.0.0.1:{port}").start()
        self._marks = {}
        self._done = threading.Event()

    def close(self) -> None:
        self.worker.shutdown()
        self.proc.terminate()
        self.proc.wait(30)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- plain generate


class PlainRunner:
    def __init__(self, folder: Path, prompt: str):
        from glmtui.engine import loading
        from glmtui.engine.events import ChatMessage

        self.loaded = loading.load_model(str(folder), "fp32", "cpu", lambda *a: None)
        self.ids = self.loaded.chat_format.encode_conversation([ChatMessage("user", prompt)])

    def run(self, tokens: int) -> dict:
        import torch
        from transformers.generation.streamers import BaseStreamer

        class FirstToken(BaseStreamer):
            def __init__(self):
                self.calls = 0
                self.at = None

            def put(self, value):
                self.calls += 1
                if self.calls == 2:  # the first call carries the prompt
                    self.at = time.perf_counter()

            def end(self):
                pass

        stops = list(self.loaded.chat_format.stop_token_ids)
        x = torch.tensor([self.ids], dtype=torch.long)
        streamer = FirstToken()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.loaded.model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=tokens, do_sample=False,
                temperature=None, top_p=None, top_k=None, eos_token_id=stops, pad_token_id=stops[0],
                repetition_penalty=1.0, streamer=streamer,
            )
        seconds = time.perf_counter() - start
        new = out[0, len(self.ids):].tolist()
        return {"tokens": len(new), "seconds": seconds, "ttft": streamer.at - start,
                "text": self.loaded.chat_format.decode(new)}


# ---------------------------------------------------------------- pinning and rounds


class Pinning:
    """Each side's model computation on one core of its own, the rest on the other (module docstring)."""

    def __init__(self, wanted: Optional[bool], threads: int):
        self.allowed = sorted(os.sched_getaffinity(0))
        self.why_not: Optional[str] = None
        if wanted is False:
            self.why_not = "--no-pin"
        elif wanted is None and threads != 1:
            self.why_not = "torch threads are not 1 (pinning is on by default only with --threads 1; --pin forces it)"
        elif len(self.allowed) < 2:
            self.why_not = f"only {len(self.allowed)} CPU allowed to this process"
        self.ui_core = self.allowed[0]
        self.model_core = self.allowed[1] if len(self.allowed) > 1 else self.allowed[0]

    @property
    def on(self) -> bool:
        return self.why_not is None

    @staticmethod
    def pin_process(pid: int, cpus: set[int]) -> int:
        """Every thread of ``pid`` onto ``cpus`` (affinity is per thread on Linux); returns how many."""
        pinned = 0
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return 0
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
                pinned += 1
            except OSError:  # a thread that has just ended
                pass
        return pinned

    def way(self, way: str, other_pid: Optional[int] = None) -> None:
        """Pin for a rep of ``way``: plain and worker run the model in this process; the others in
        ``other_pid`` (the app's engine process, the engine alone, glmtui serve) while this process waits."""
        if not self.on:
            return
        if way in ("plain", "worker"):
            self.pin_process(os.getpid(), {self.model_core})
            return
        self.pin_process(os.getpid(), {self.ui_core})
        if other_pid is not None:
            self.pin_process(other_pid, {self.model_core})

    def release(self) -> None:
        if self.on:
            self.pin_process(os.getpid(), set(self.allowed))

    def describe(self) -> str:
        if not self.on:
            return f"pinning: none ({self.why_not})"
        ui, model = self.ui_core, self.model_core
        return (f"pinning: the model's computation on CPU {model} every way; plain and worker: this whole process "
                f"on CPU {model}; engine and serve: their process on CPU {model}, this one (waiting for events) on "
                f"CPU {ui}; ui: the app's engine process on CPU {model}, the UI process (all its threads) on CPU "
                f"{ui}; every thread of each process, again before each rep")


def rotating_rounds(rounds: int, others: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The order of the ways in each round: ui and plain next to each other (their order alternating
    from round to round), the other ways around them, the whole order rotating by one each round."""
    order: list[tuple[str, ...]] = []
    units: list[tuple[str, ...]] = [("ui", "plain"), *((way,) for way in others)]
    for r in range(rounds):
        shift = r % len(units)
        turned = units[shift:] + units[:shift]
        order.append(tuple(way for unit in turned
                           for way in (unit[::-1] if unit == ("ui", "plain") and r % 2 else unit)))
    return order


def quartiles(values: list[float]) -> str:
    """``median M (quartiles q1-q3, min-max a-b, n)`` of per-round figures."""
    med = statistics.median(values)
    if len(values) < 2:
        return f"{med:.3f} (one round)"
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{med:.3f} (quartiles {q1:.3f}-{q3:.3f}, min-max {min(values):.3f}-{max(values):.3f}, n={len(values)})"


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-new", type=int, default=300, help="the UI's max new tokens (the reply may stop earlier)")
    parser.add_argument("--reps", type=int, default=8, help="rounds; each runs every way once")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--profile", action="store_true", help="then profile one more UI reply (needs pyinstrument)")
    parser.add_argument("--serve", action="store_true",
                        help="also a 'serve' way: glmtui serve in its own process over its OpenAI API (SSE)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                        help="one core for each side's model, the other for the rest (default: on with --threads 1)")
    args = parser.parse_args()
    pinning = Pinning(args.pin, args.threads)

    if args.threads:  # engine processes import torch with this many threads
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    watch = LoadWatch()
    print(watch.sample("before"), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GLMTUI_HOME"] = str(Path(tmp) / "home")  # a throwaway history file and config
        folder = build_model(Path(tmp) / "bench-glm", args.hidden, args.layers)
        print(f"model: native GLM hidden {args.hidden}, {args.layers} layers, fp32 CPU, torch threads "
              f"{torch.get_num_threads()}, {os.cpu_count()} CPUs; greedy; prompt {args.prompt!r}", flush=True)
        print(pinning.describe(), flush=True)

        calib = asyncio.run(ui_run(folder, args.prompt, args.max_new))
        tokens = calib["tokens"]
        print(f"calibration (UI, not counted): {tokens} tokens in {calib['seconds']:.2f} s", flush=True)
        plain = PlainRunner(folder, args.prompt)
        plain.run(8)  # warm-up
        worker = WorkerRunner(folder)
        worker.run(args.prompt, 8)  # warm-up
        engine = WorkerRunner(folder, "engine")
        engine.run(args.prompt, 8)  # warm-up
        serve = ServeRunner(folder) if args.serve else None
        if serve is not None:
            serve.run(args.prompt, 8)  # warm-up

        results: dict[str, list[dict]] = {"ui": [], "engine": [], "worker": [], "plain": []}
        others: tuple[str, ...] = ("engine", "worker")
        if serve is not None:
            results["serve"] = []
            others = ("engine", "serve", "worker")
        for rep, order in enumerate(rotating_rounds(args.reps, others)):
            for way in order:
                if way == "ui":
                    pinning.way("ui")  # the app's threads and the processes it starts begin on the UI core
                    r = asyncio.run(ui_run(folder, args.prompt, args.max_new,
                                           before_enter=lambda e: pinning.way("ui", getattr(e, "pid", None))))
                elif way == "worker":
                    pinning.way(way)
                    r = worker.run(args.prompt, args.max_new)
                elif way == "engine":
                    pinning.way(way, engine.worker.pid)
                    r = engine.run(args.prompt, args.max_new)
                elif way == "serve" and serve is not None:
                    pinning.way(way, serve.pid)
                    r = serve.run(args.prompt, args.max_new)
                else:
                    pinning.way(way)
                    r = plain.run(tokens)
                assert r["tokens"] == tokens, f"{way} produced {r['tokens']} tokens, expected {tokens}"
                results[way].append(r)
                print(f"  rep {rep} {way:6} {r['tokens']} tok {r['seconds']:.3f} s "
                      f"{r['tokens'] / r['seconds']:7.1f} tok/s  ttft {r['ttft'] * 1000:6.1f} ms", flush=True)
        pinning.release()
        worker.close()
        engine.close()
        if serve is not None:
            serve.close()
        profile = ""
        if args.profile:
            profile = asyncio.run(ui_run(folder, args.prompt, args.max_new, profile=True))["profile"]

    same_text = results["ui"][0]["text"] == results["worker"][0]["text"] == results["engine"][0]["text"]
    med = {}
    for way, runs in results.items():
        med[way] = {
            "tps": statistics.median(r["tokens"] / r["seconds"] for r in runs),
            "seconds": statistics.median(r["seconds"] for r in runs),
            "ttft": statistics.median(r["ttft"] for r in runs),
        }
    print(f"\nreply: {tokens} tokens each way; UI text == engine text == worker text: {same_text}; "
          f"medians of {args.reps} rounds")
    print("way      tok/s   vs plain   total s   TTFT ms")
    for way in ("plain", "worker", "engine", "serve", "ui"):
        if way not in med:
            continue
        m = med[way]
        ratio = m["tps"] / med["plain"]["tps"]
        print(f"{way:7} {m['tps']:7.1f} {ratio:9.3f} {m['seconds']:9.3f} {m['ttft'] * 1000:9.1f}")

    def per_round(way: str) -> list[float]:  # each round's ratio against plain in the same round
        return [w["tokens"] / w["seconds"] / (p["tokens"] / p["seconds"])
                for w, p in zip(results[way], results["plain"], strict=True)]

    paired = per_round("ui")  # ui and plain ran next to each other in every round
    print(f"per-round worker/plain: median {quartiles(per_round('worker'))}")
    print(f"per-round engine/plain: median {quartiles(per_round('engine'))}")
    if "serve" in results:
        print(f"per-round serve/plain:  median {quartiles(per_round('serve'))}")
    print(f"per-round ui/plain (paired, neighbouring reps): median {quartiles(paired)}")
    print(f"per-round plain tok/s: median {quartiles([r['tokens'] / r['seconds'] for r in results['plain']])}")
    ui_cpu = statistics.median(r["ui_cpu"] for r in results["ui"])
    inside = statistics.median(r["worker_seconds"] for r in results["ui"])
    alone = statistics.median(r["worker_seconds"] for r in results["engine"])
    print(f"where the UI's time goes: UI thread CPU {ui_cpu:.2f} s per reply ({ui_cpu / tokens * 1000:.1f} ms/token); "
          f"the model's own generation (Finished.total_seconds) {inside:.2f} s under the app vs {alone:.2f} s "
          f"with its engine process alone")
    ui_process = statistics.median(r["ui_process_cpu"] for r in results["ui"])
    engine_inside = statistics.median(r["engine_cpu"] for r in results["ui"])
    engine_alone = statistics.median(r["engine_cpu"] for r in results["engine"])
    print(f"CPU per token: UI process (all its threads) {ui_process / tokens * 1000:.2f} ms; the engine process "
          f"{engine_inside / tokens * 1000:.2f} ms under the app vs {engine_alone / tokens * 1000:.2f} ms alone")
    if profile:
        print("\nUI thread from Enter to the final paint (pyinstrument):\n" + profile)
    print(watch.sample("after"))
    print(watch.verdict())
    print(pinning.describe())
    ratio = statistics.median(paired)
    print(f"\nHEADLINE ui/plain tokens/s, median of {len(paired)} paired rounds {ratio:.3f} "
          f"(min-max {min(paired):.3f}-{max(paired):.3f}; ratio of the medians "
          f"{med['ui']['tps'] / med['plain']['tps']:.3f}) (target >= 0.97): {'met' if ratio >= 0.97 else 'MISSED'}"
          f"{' [under load]' if watch.under_load else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
