"""Benchmark 2: long replies — the chat UI's cost of a streamed 10,000-token reply vs a 1,000-token one.

The real GlmApp runs headless (``App.run_test``) with a scripted engine in
place of the inference worker: it has the worker's interface and, from its own
thread, calls the app's engine listener with the same ``Started`` / ``Token`` /
``Finished`` events the worker emits (the listener posts them to the app as
``EngineEvent`` messages, exactly as with the real worker), at full speed, so
what is measured is the UI's cost, not a model's. The reply is realistic mixed
Markdown (headings, paragraphs, bullet and numbered lists, code blocks, tables,
quotes, Chinese), cut into BPE-sized tokens, ending in a code block.

Figures (medians over ``--reps`` alternating rounds):
* time from pressing Enter to the first screen refresh after the reply's
  Finished was handled, for N and 10 x N tokens, and their ratio (target: linear,
  10k/1k <= 12); the split between draining the tokens and the final full update;
* the same with tokens paced at ``--paced-rate`` tokens/s (slower than the UI can
  draw, as from a real model), where wall time is the producer's: the UI thread's
  CPU seconds per reply, 10k vs 1k (target <= 12);
* keystroke latency while the 10k reply streams: a thread posts key events the
  way Textual's terminal driver does (``driver.send_message``) every 40 ms (a
  letter; every 21st key is ctrl+u, emptying the line); per letter, the time
  until the prompt's text holds it (``TextArea.edit`` applied) and until the
  next screen refresh after that (target: < 50 ms, median and max);
  run once with tokens at full speed (the worst case: keys queue behind the
  tokens already posted) and once paced at ``--paced-rate`` tokens/s;
* the final render: the Markdown's source equals the full text, its last block
  is a code block holding the last code, and it has as many code blocks, tables
  and headings as the text.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import LoadWatch, end_run, hook_generation_events, type_prompt  # noqa: E402 - after the sys.path setup

# ---------------------------------------------------------------- a realistic reply

WORDS = (
    "the model memory GPU quantization layer attention token context cache weights bandwidth latency "
    "terminal stream render window batch kernel tensor device driver install config prompt reply history "
    "server client request response thread queue worker event update widget screen layout markdown table "
    "list code block heading paragraph fast slow large small first second next each every because while "
    "when where which that this these those with without into from over under after before between"
).split()
ZH = [
    "量化可以显著减少显存占用", "模型在终端里流式输出回答", "我们先加载权重再开始推理", "上下文越长缓存越大",
    "这个表格比较了不同的精度", "代码块会在回答结束时完整渲染", "清华大学和智谱发布了这个模型", "请注意显卡驱动的版本",
]
CODE = [
    "import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
    "def load(path: str, mode: str = \"bf16\"):",
    "    dtype = {\"bf16\": torch.bfloat16, \"fp16\": torch.float16}[mode]",
    "    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)", "    return model.eval()", "",
    "for step in range(10):", "    logits = model(input_ids).logits[:, -1]", "    next_id = int(logits.argmax())",
    "    print(f\"step {step}: {next_id}\")", "    if next_id == eos: break",
]
TOKEN_RE = re.compile(r" ?[A-Za-z]{1,6}| ?\d{1,3}|[\u4e00-\u9fff]{1,2}|\n+| +|[^\sA-Za-z\d\u4e00-\u9fff]")


def tokenize(text: str) -> list[str]:
    """BPE-sized pieces (about 4 characters of English, 1-2 of Chinese); joins back to ``text``."""
    tokens = TOKEN_RE.findall(text)
    assert "".join(tokens) == text
    return tokens


def sentence(rng: random.Random, n: Optional[int] = None) -> str:
    words = [rng.choice(WORDS) for _ in range(n or rng.randint(6, 16))]
    if rng.random() < 0.3:
        i = rng.randrange(len(words))
        words[i] = f"`{words[i]}()`" if rng.random() < 0.5 else f"**{words[i]}**"
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"])


def section(rng: random.Random, index: int) -> str:
    kind = index % 8
    if kind == 0:
        return f"{'#' * rng.randint(1, 3)} {sentence(rng, 4)[:-1]} {index}\n\n"
    if kind in (1, 5):
        return " ".join(sentence(rng) for _ in range(rng.randint(2, 5))) + "\n\n"
    if kind == 2:
        return "".join(rng.choice(ZH) + rng.choice("，。；") for _ in range(rng.randint(3, 6))) + "\n\n"
    if kind == 3:
        return "".join(f"- {sentence(rng, rng.randint(3, 9))}\n" for _ in range(rng.randint(3, 6))) + "\n"
    if kind == 4:
        start = rng.randrange(len(CODE))
        lines = [CODE[(start + i) % len(CODE)] for i in range(rng.randint(5, 12))]
        return "```python\n" + "\n".join(lines) + "\n```\n\n"
    if kind == 6:
        rows = "".join(f"| {rng.choice(['bf16', 'fp16', 'int8', 'int4'])} | {rng.randint(1, 80)} GB | "
                       f"{rng.choice(ZH)[:6]} |\n" for _ in range(rng.randint(3, 6)))
        return "| mode | memory | 说明 |\n|---|---|---|\n" + rows + "\n"
    return "".join(f"{i + 1}. {sentence(rng, rng.randint(3, 8))}\n" for i in range(rng.randint(2, 5))) + "\n" \
        + ("> " + sentence(rng) + "\n\n" if rng.random() < 0.5 else "")


LAST_CODE = "def last_block():\n    return \"the end\"  # 结束"


def make_reply(n_tokens: int, seed: int = 0) -> tuple[list[str], str]:
    """Exactly ``n_tokens`` tokens of mixed Markdown ending in a code block; (tokens, text)."""
    rng = random.Random(seed)
    tail = tokenize("```python\n" + LAST_CODE + "\n```\n")
    tokens: list[str] = []
    for index in itertools.count():
        part = tokenize(section(rng, index))
        if len(tokens) + len(part) > n_tokens - len(tail) - 2:
            break
        tokens += part
    fill = n_tokens - len(tail) - len(tokens)
    words = [rng.choice(WORDS) for _ in range(max(0, fill - 1))]
    filler = tokenize((" ".join(words).capitalize() + "\n\n") if words else "\n\n")
    while len(filler) > fill:  # a word that tokenized into two pieces
        words.pop()
        filler = tokenize((" ".join(words).capitalize() + "\n\n") if words else "\n\n")
    while len(filler) < fill:
        filler.insert(len(filler) - 1, " ok")
    tokens += filler + tail
    assert len(tokens) == n_tokens, (len(tokens), n_tokens)
    return tokens, "".join(tokens)


# ---------------------------------------------------------------- a scripted engine


class ScriptedEngine:
    """The InferenceWorker's interface; ``generate`` replays ``self.tokens`` from a thread at full speed
    (or ``self.rate`` tokens/s), calling the listeners with the worker's own event types."""

    def __init__(self) -> None:
        self._listeners: list = []
        self._ids = itertools.count(1)
        self._cancel = threading.Event()
        self.model_info = None
        self.tokens: list[str] = []
        self.rate: Optional[float] = None
        self.posted: dict[str, float] = {}

    def start(self):
        return self

    def add_listener(self, listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, event) -> None:
        for listener in list(self._listeners):
            listener(event)

    def load(self, path, mode: str = "fp32", device: str = "cpu", sink=None) -> int:
        from glmtui.engine.events import Loaded

        rid = next(self._ids)
        self.model_info = True
        threading.Thread(target=self._emit, args=(Loaded(rid, "scripted", str(path), mode, "cpu", 0, 0.0, 32768),),
                         daemon=True).start()
        return rid

    def unload(self, sink=None) -> int:
        from glmtui.engine.events import Unloaded

        rid = next(self._ids)
        self.model_info = None
        self._emit(Unloaded(rid, "scripted"))
        return rid

    def generate(self, messages, params=None, sink=None, tools=None) -> int:
        rid = next(self._ids)
        self._cancel.clear()
        threading.Thread(target=self._replay, args=(rid, list(self.tokens), self.rate), daemon=True).start()
        return rid

    def _replay(self, rid: int, tokens: list[str], rate: Optional[float]) -> None:
        from glmtui.engine.events import Finished, Started, Token

        start = time.perf_counter()
        self._emit(Started(rid, 12))
        sent = 0
        for i, text in enumerate(tokens):
            if self._cancel.is_set():
                break
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            self._emit(Token(rid, text))
            sent += 1
        self.posted["last_token"] = time.perf_counter()
        total = time.perf_counter() - start
        self._emit(Finished(rid, "".join(tokens[:sent]), 12, sent, 0.0, sent / total if total else None, total,
                            "length" if sent == len(tokens) else "cancelled"))

    def cancel(self, request_id=None) -> None:
        self._cancel.set()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._cancel.set()


# ---------------------------------------------------------------- one streamed reply in the real app


async def run_reply(folder: Path, n_tokens: int, keys: bool = False, rate: Optional[float] = None,
                    size=(120, 40), key_period: float = 0.04, timeout: float = 900.0, profile: bool = False) -> dict:
    """One reply of ``n_tokens`` through the real app; with ``profile``, ``result["profile"]`` is a
    pyinstrument report of the UI thread from Enter to the final paint."""
    from textual import events
    from textual.widgets._markdown import MarkdownFence, MarkdownHeader, MarkdownTable

    from glmtui.engine.events import Finished, Token
    from glmtui.ui.app import GlmApp
    from glmtui.ui.chat_text import visible

    tokens, text = make_reply(n_tokens)
    engine = ScriptedEngine()
    app = GlmApp(model=str(folder), mode="fp32", device="cpu", engine=engine)
    async with app.run_test(size=size) as pilot:
        deadline = time.monotonic() + 60
        while app.loaded is None:
            assert time.monotonic() < deadline, "the scripted load did not arrive"
            await pilot.pause(0.02)
        await pilot.pause(0.3)
        engine.tokens, engine.rate = tokens, rate
        chat = app.chat_pane
        await type_prompt(pilot, chat, "Write a long answer with headings, lists, code and tables.")

        marks: dict[str, float] = {}
        done = asyncio.Event()

        def before(event, now: float) -> None:
            if isinstance(event, Finished):
                marks["finished_in"] = now

        def after(event, now: float) -> None:
            if isinstance(event, Token):
                marks["token"] = now
            elif isinstance(event, Finished):
                marks["finished"] = now

        hook_generation_events(chat, before, after)

        typed: list[dict] = []  # per key: char, posted, edited, painted
        prompt = chat.input
        edit = prompt.edit

        def timed_edit(e):
            result = edit(e)
            now = time.perf_counter()
            for k in typed:
                if "edited" not in k and "clear" not in k and k["char"] in e.text:
                    k["edited"] = now
                    break
            return result

        screen = app.screen
        composite = screen._compositor_refresh

        def compositor_refresh() -> None:
            composite()
            now = time.perf_counter()
            for k in typed:
                if "edited" in k and "painted" not in k:
                    k["painted"] = now
            if "finished" in marks and "final_paint" not in marks:
                marks["final_paint"] = now
                done.set()

        screen._compositor_refresh = compositor_refresh
        stop_keys = threading.Event()

        def typist() -> None:
            """A letter every ``key_period``; after 20 letters, ctrl+u empties the line (keeps the input short)."""
            driver = app._driver
            for char in itertools.cycle("abcdefghijklmnopqrstu"):
                if stop_keys.wait(key_period):
                    return
                if char == "u":
                    key = events.Key("ctrl+u", None)
                    typed.append({"char": "", "posted": time.perf_counter(), "clear": True})
                else:
                    key = events.Key(char, char)
                    typed.append({"char": char, "posted": time.perf_counter()})
                key.set_sender(app)
                driver.send_message(key)

        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.001, async_mode="disabled")
            profiler.start()
        enter = events.Key("enter", "\r")
        enter.set_sender(app)
        cpu = time.thread_time()  # the app's event loop runs on this thread
        start = time.perf_counter()
        app._driver.send_message(enter)  # as the terminal driver delivers it (pilot.press would wait for idle)
        if keys:
            prompt.edit = timed_edit
            threading.Thread(target=typist, daemon=True).start()
        await asyncio.wait_for(done.wait(), timeout)
        cpu = time.thread_time() - cpu
        if profiler is not None:
            profiler.stop()
        stop_keys.set()
        await pilot.pause(0.3)  # the last keys land

        reply = chat.turns[-1]
        md = reply.widget.markdown
        blocks = list(md.children)
        fences = [b for b in blocks if isinstance(b, MarkdownFence)]
        checks = {
            "complete": reply.status == "complete" and reply.content == text,
            "source": md.source == visible(text),
            "last block is the last code": bool(blocks) and isinstance(blocks[-1], MarkdownFence)
            and blocks[-1].code.rstrip("\n") == LAST_CODE,
            "code blocks": len(fences) == text.count("```python"),
            "tables": sum(isinstance(b, MarkdownTable) for b in blocks) == text.count("| mode | memory |"),
            "headings": sum(isinstance(b, MarkdownHeader) for b in blocks)
            == len(re.findall(r"^#{1,3} ", text, flags=re.M)),
            "stored": app.store.messages(chat.conversation_id)[-1].content == text,
        }
        result = {
            "tokens": n_tokens,
            "seconds": marks["final_paint"] - start,
            "drain": marks["token"] - start,
            "finish": marks["final_paint"] - marks["finished_in"],
            "producer": engine.posted["last_token"] - start,
            "ui_cpu": cpu,
            "checks": checks,
        }
        if keys:
            letters = [k for k in typed if "clear" not in k]
            landed = [k for k in letters if "edited" in k]
            since_clear = typed[max((i for i, k in enumerate(typed) if "clear" in k), default=-1) + 1:]
            result["typed"] = len(letters)
            result["keys_ok"] = prompt.text == "".join(k["char"] for k in since_clear)
            result["input_text"] = (prompt.text, "".join(k["char"] for k in since_clear))
            result["edit_ms"] = [(k["edited"] - k["posted"]) * 1000 for k in landed]
            result["paint_ms"] = [(k["painted"] - k["posted"]) * 1000 for k in landed if "painted" in k]
        if profiler is not None:
            result["profile"] = profiler.output_text(unicode=True, color=False, show_all=True)
        screen._compositor_refresh = composite
        await end_run(pilot, app)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1000, help="the short reply; the long one is 10x")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--paced-rate", type=float, default=200.0, help="tokens/s of the paced keystroke run")
    args = parser.parse_args()
    watch = LoadWatch()
    print(watch.sample("before"), flush=True)

    import tiny_models

    short, long_ = args.tokens, args.tokens * 10
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GLMTUI_HOME"] = str(Path(tmp) / "home")
        folder = tiny_models.build_native_glm(Path(tmp) / "scripted-glm")  # only its path is used
        sample = make_reply(long_)[1]
        print(f"reply: mixed Markdown, {short} and {long_} tokens ({len(sample)} characters for {long_}: "
              f"{sample.count('```python')} code blocks, {sample.count('| mode | memory |')} tables); "
              f"app 120x40, {os.cpu_count()} CPUs", flush=True)
        asyncio.run(run_reply(folder, short))  # warm-up (imports, first compose)
        runs: dict[int, list[dict]] = {short: [], long_: []}
        for rep in range(args.reps):
            for n in ((short, long_) if rep % 2 == 0 else (long_, short)):
                r = asyncio.run(run_reply(folder, n))
                runs[n].append(r)
                bad = [k for k, ok in r["checks"].items() if not ok]
                print(f"  rep {rep} {n:6} tokens: {r['seconds']:7.2f} s ({n / r['seconds']:7.0f} tok/s)  "
                      f"tokens drained {r['drain']:6.2f} s, final update {r['finish'] * 1000:5.0f} ms, "
                      f"producer done at {r['producer']:5.2f} s  "
                      f"checks {'ok' if not bad else 'FAILED ' + ', '.join(bad)}",
                      flush=True)
        keyed = asyncio.run(run_reply(folder, long_, keys=True))
        paced = asyncio.run(run_reply(folder, long_, keys=True, rate=args.paced_rate))
        # tokens slower than the UI can draw them (as from a real model): the UI thread's CPU per reply
        paced_cpu = {n: asyncio.run(run_reply(folder, n, rate=args.paced_rate)) for n in (short, long_)}

    med = {n: statistics.median(r["seconds"] for r in rs) for n, rs in runs.items()}
    ratio = med[long_] / med[short]
    print(f"\nmedian {short}: {med[short]:.2f} s ({short / med[short]:.0f} tok/s); "
          f"{long_}: {med[long_]:.2f} s ({long_ / med[long_]:.0f} tok/s)")
    print(f"ratio {long_}/{short} = {ratio:.2f} (linear = 10; target <= 12): {'met' if ratio <= 12 else 'MISSED'}")
    cpu_ratio = paced_cpu[long_]["ui_cpu"] / paced_cpu[short]["ui_cpu"]
    busy = {n: r["ui_cpu"] / r["seconds"] for n, r in paced_cpu.items()}
    print(f"paced at {args.paced_rate:.0f} tok/s: UI thread CPU {paced_cpu[short]['ui_cpu']:.2f} s for {short} tokens "
          f"(reply {paced_cpu[short]['seconds']:.1f} s, UI busy {busy[short]:.0%}), {paced_cpu[long_]['ui_cpu']:.2f} s "
          f"for {long_} (reply {paced_cpu[long_]['seconds']:.1f} s, UI busy {busy[long_]:.0%}, final update "
          f"{paced_cpu[long_]['finish'] * 1000:.0f} ms); ratio {cpu_ratio:.1f} (target <= 12): "
          f"{'met' if cpu_ratio <= 12 else 'MISSED'}"
          + ("; the UI thread is saturated (busy >= 90%), so it draws less often and the ratio understates the cost"
             if max(busy.values()) >= 0.9 else ""))
    all_checks = [r["checks"] for rs in runs.values() for r in rs] + [keyed["checks"], paced["checks"]] \
        + [r["checks"] for r in paced_cpu.values()]
    failed = sorted({k for c in all_checks for k, ok in c.items() if not ok})
    print("final render checks (source == text, last block is the last code block, code blocks/tables/headings "
          f"counted, stored text): {'all ok' if not failed else 'FAILED: ' + ', '.join(failed)}")
    worst = 0.0
    for label, r in (("full speed", keyed), (f"paced {args.paced_rate:.0f} tok/s", paced)):
        e, p = r["edit_ms"], r["paint_ms"]
        print(f"keystrokes during the {long_}-token reply ({label}, reply {r['seconds']:.1f} s): "
              f"{len(e)}/{r['typed']} keys landed, text correct: "
              f"{r['keys_ok'] or 'NO, input %r, typed %r' % r['input_text']}; "
              f"to the input's text: median {statistics.median(e):.1f} ms, max {max(e):.1f} ms; "
              f"to the next frame: median {statistics.median(p):.1f} ms, max {max(p):.1f} ms")
        worst = max(worst, max(p))
    print(f"keystroke target < 50 ms: full speed {'met' if max(keyed['paint_ms']) < 50 else 'MISSED'}, "
          f"paced {'met' if max(paced['paint_ms']) < 50 else 'MISSED'}")
    print(watch.sample("after"))
    print(watch.verdict())
    print(f"\nHEADLINE {long_}/{short} time ratio {ratio:.2f} (target <= 12: {'met' if ratio <= 12 else 'MISSED'}); "
          f"paced UI CPU ratio {cpu_ratio:.1f}; key to frame during the paced reply median "
          f"{statistics.median(paced['paint_ms']):.0f} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
