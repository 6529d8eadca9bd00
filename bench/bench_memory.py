"""Benchmark 5: memory and speed per quantization mode, beside the prediction.

A native GLM (hidden 1024, 8 layers by default) whose greedy replies never stop early is built
offline (bench/harness.build_nonstop_glm), so every mode produces replies of exactly the same length.

Speed: every mode is loaded through glmtui's loader into this one process, then ``--rounds``
alternating rounds (mode order forward, then backward) each generate ``--tokens`` greedy tokens per
mode through glmtui's own generation path (``engine.generation.run_generation``). Prefill (time to
the first token) and decode tok/s (the tokens after the first, over the time after it) are reported
separately, as medians with the per-round spread; "vs fp32" is each round's ratio to fp32 in the same
round.

Memory: each mode is loaded again in a fresh process of its own, which records its resident set after
importing torch/transformers/glmtui (the baseline), its peak during the load and its peak during a
``--gen-tokens`` greedy generation (sampled every 2 ms, plus the kernel's high-water mark), and the
footprint of the weights (unique storages). Code the load would import lazily (the model class,
bitsandbytes) is imported before the baseline. The prediction's parts (weights / KV cache at the
generation's context / overhead) are compared with those: weights with the measured footprint, the
total with the process's growth over its baseline.
"""

from __future__ import annotations

import argparse
import json
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

from harness import LoadWatch, alternating, build_nonstop_glm, spread  # noqa: E402 - after the sys.path setup

PROMPT = "Write a long story about a terminal."
MIB = 2**20


# ---------------------------------------------------------------- one mode's memory, in a process of its own


class PeakRSS:
    """Samples this process's resident set in a thread; ``peak()`` since the last ``reset()``."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            if rss > self._peak:
                self._peak = rss
            time.sleep(self._interval)

    def now(self) -> int:
        return self._proc.memory_info().rss

    def reset(self) -> None:
        self._peak = self.now()

    def peak(self) -> int:
        return max(self._peak, self.now())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def child(folder: str, mode: str, gen_tokens: int) -> int:
    import resource
    import threading as _threading

    # Code the load imports lazily is part of the baseline, not of the model: the prediction covers the
    # model's memory (the RSS after imports is printed beside it).
    import torch  # noqa: F401 - imported for the baseline
    from transformers import AutoModelForCausalLM, AutoTokenizer, GlmForCausalLM  # noqa: F401 - the baseline

    if mode in ("int8", "int4"):
        import bitsandbytes  # noqa: F401 - the baseline

    from glmtui.engine import generation, loading
    from glmtui.engine.events import ChatMessage, Finished, GenerationParams

    rss = PeakRSS()
    time.sleep(0.05)
    baseline = rss.now()
    rss.reset()
    loaded = loading.load_model(folder, mode, "cpu")
    load_peak = rss.peak()
    after_load = rss.now()
    rss.reset()
    events: list = []
    generation.run_generation(loaded, [ChatMessage("user", PROMPT)],
                              GenerationParams(max_new_tokens=gen_tokens, temperature=0.0),
                              _threading.Event(), events.append, 1)
    gen_peak = rss.peak()
    rss.stop()
    done = events[-1]
    assert isinstance(done, Finished), done
    print(json.dumps({
        "baseline": baseline, "load_peak": load_peak, "after_load": after_load, "gen_peak": gen_peak,
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "footprint": loaded.footprint_bytes, "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
    }))
    return 0


# ---------------------------------------------------------------- speed, all modes in this process


def speed(folder: Path, modes: list[str], tokens: int, rounds: int) -> dict[str, list[dict]]:
    import threading as _threading

    from glmtui.engine import generation, loading
    from glmtui.engine.events import ChatMessage, Finished, GenerationParams

    loaded = {mode: loading.load_model(str(folder), mode, "cpu") for mode in modes}
    messages = [ChatMessage("user", PROMPT)]

    def one(mode: str, n: int) -> Finished:
        events: list = []
        generation.run_generation(loaded[mode], messages, GenerationParams(max_new_tokens=n, temperature=0.0),
                                  _threading.Event(), events.append, 1)
        assert isinstance(events[-1], Finished), events[-1]
        return events[-1]

    for mode in modes:  # first-call costs (kernels, allocator) outside the rounds
        one(mode, 4)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r, order in enumerate(alternating(rounds, modes)):
        for mode in order:
            done = one(mode, tokens)
            assert done.completion_tokens == tokens, f"{mode} produced {done.completion_tokens} tokens, not {tokens}"
            runs[mode].append({"prefill_s": done.time_to_first_token, "decode_tps": done.tokens_per_second})
            print(f"  round {r} {mode:5} {tokens} tok  prefill {done.time_to_first_token * 1000:6.1f} ms  "
                  f"decode {done.tokens_per_second:6.1f} tok/s", flush=True)
    loaded.clear()  # the models go before the memory runs (one() keeps the dict, not the models)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per reply in the speed rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gen-tokens", type=int, default=1000, help="tokens generated in the memory runs")
    parser.add_argument("--modes", default="fp32,bf16,fp16,int8,int4")
    parser.add_argument("--memory-only", action="store_true", help="skip the speed rounds (memory figures only)")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "MODE", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))

    import torch

    from glmtui.engine.predict import predict_dir  # the exact count (meta-device model), as glmtui fit uses

    modes = args.modes.split(",")
    watch = LoadWatch()
    print(watch.sample("before"), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_nonstop_glm(Path(tmp) / "glm", args.hidden, args.layers, context=4096)
        print(f"model: native GLM hidden {args.hidden}, {args.layers} layers, CPU, torch threads "
              f"{torch.get_num_threads()}; greedy, stop rows zeroed (equal-length replies)", flush=True)
        runs: dict[str, list[dict]] = {}
        if not args.memory_only:
            print(f"speed: {args.rounds} alternating rounds of {args.tokens} tokens per mode", flush=True)
            runs = speed(folder, modes, args.tokens, args.rounds)
        print(f"memory: each mode in a fresh process, a {args.gen_tokens}-token generation", flush=True)
        mem = {}
        for mode in modes:
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), mode, str(args.gen_tokens)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                mem[mode] = {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
                continue
            mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        context = max((m["prompt_tokens"] + m["completion_tokens"] for m in mem.values() if "error" not in m),
                      default=args.gen_tokens)
        predictions = predict_dir(folder, tuple(modes), device="cpu", context_len=context)

    base = "fp32" if "fp32" in modes else modes[0]
    if runs:
        print(f"\nspeed, medians of {args.rounds} rounds (min-max); vs {base} = per-round ratio in the same round")
        print("mode  prefill_ms         decode_tok/s            decode_vs_" + base)
    for mode in modes if runs else ():
        pre = [r["prefill_s"] * 1000 for r in runs[mode]]
        dec = [r["decode_tps"] for r in runs[mode]]
        ratio = [r["decode_tps"] / b["decode_tps"] for r, b in zip(runs[mode], runs[base], strict=True)]
        print(f"{mode:5} {statistics.median(pre):7.1f} ({min(pre):.0f}-{max(pre):.0f})"
              f"   {statistics.median(dec):7.1f} ({min(dec):.1f}-{max(dec):.1f})   {spread(ratio)}")

    print(f"\nmemory (host RSS; the exact prediction (weights and KV cache counted on a meta-device model, "
          f"overhead estimated) at a {context}-token context: prompt + generated)")
    print("mode  weights_MiB meas/pred  | RSS base  load_peak  gen_peak (MiB, growth over base) | "
          "predicted total (weights+KV+overhead)  growth/predicted")
    totals = []
    for mode in modes:
        m, p = mem[mode], predictions[mode]
        if "error" in m:
            print(f"{mode:5} failed: {m['error']}")
            continue
        load_growth, gen_growth = m["load_peak"] - m["baseline"], m["gen_peak"] - m["baseline"]
        ratio = gen_growth / p.total_bytes
        totals.append(ratio)
        print(f"{mode:5} {m['footprint'] / MIB:11.1f} {m['footprint'] / p.weight_bytes:9.3f}  | "
              f"{m['baseline'] / MIB:8.0f} {load_growth / MIB:9.1f} {gen_growth / MIB:9.1f} | "
              f"{p.total_bytes / MIB:8.1f} = {p.weight_bytes / MIB:.1f}+{p.kv_cache_bytes / MIB:.1f}+"
              f"{p.overhead_bytes / MIB:.1f}   {ratio:6.3f}")
    print(watch.sample("after"))
    print(watch.verdict())
    if totals:
        print(f"\nHEADLINE process growth / predicted total: {min(totals):.3f}-{max(totals):.3f} across modes"
              f"{' [under load]' if watch.under_load else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
