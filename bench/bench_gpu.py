"""GPU benchmark: a random-weight model of ChatGLM3-6B's exact shape, through glmtui (issue 14's figures).

One command on a GPU box (`python bench/bench_gpu.py`); it skips, with the reason, what the machine
lacks (no GPU: everything; no torchao: its rows) and stops starting parts once ``--budget`` seconds
have passed, so it ends well inside 10 minutes. It writes a ChatGLM3-layout checkpoint (safetensors
shards, the real 6B config, random bf16 weights), measures the copy bandwidth in the same run, and
then, through glmtui's InferenceWorker (greedy, batch 1; the stop tokens' output rows zeroed in
memory so every reply runs to its length):

- bf16 eager and bf16 compiled (static cache + torch.compile, compiled.py): decode tok/s and its
  ratio to the bandwidth bound (model bytes / copy bandwidth), warm-up (compile) seconds first with
  an empty inductor cache and then cached (a second process on the same cache folder);
- greedy equality of the compiled and eager decode on the same weights (first divergence, if any);
- TTFT of a 1,000-token prompt after warm-up (KV reuse off, so the whole prompt is prefilled);
- turn 10 vs turn 1 TTFT of a conversation reaching ~6,000 tokens of history, KV reuse on and off;
- torchao int8 / int4 weight-only (quantize_ on the loaded bf16 model, then compiled the same way)
  vs bf16 compiled, when torchao is importable (``--wheels``: a folder with its wheel, installed to a
  temporary target without an index);
- bitsandbytes int8 / int4 through glmtui's own modes with ``--bnb`` (eager, as glmtui runs them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CHATGLM3_6B = {
    "model_type": "chatglm",
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "ffn_hidden_size": 13696,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1e-05,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 28,
    "padded_vocab_size": 65024,
    "seq_length": 8192,
    "rmsnorm": True,
    "torch_dtype": "float16",
}


def write_checkpoint(dest: Path, shards: int = 7, config: dict = CHATGLM3_6B, device: str = "cuda") -> Path:
    import torch
    from safetensors.torch import save_file

    import tiny_models

    if (dest / "config.json").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    tiny_models.train_sentencepiece(dest)
    c = config
    h, ffn, layers = c["hidden_size"], c["ffn_hidden_size"], c["num_layers"]
    qkv = (c["num_attention_heads"] + 2 * c["multi_query_group_num"]) * c["kv_channels"]
    shapes = {
        "transformer.embedding.word_embeddings.weight": (c["padded_vocab_size"], h),
        "transformer.encoder.final_layernorm.weight": (h,),
        "transformer.output_layer.weight": (c["padded_vocab_size"], h),
    }
    for i in range(layers):
        p = f"transformer.encoder.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "self_attention.query_key_value.weight"] = (qkv, h)
        shapes[p + "self_attention.query_key_value.bias"] = (qkv,)
        shapes[p + "self_attention.dense.weight"] = (h, h)
        shapes[p + "mlp.dense_h_to_4h.weight"] = (2 * ffn, h)
        shapes[p + "mlp.dense_4h_to_h.weight"] = (h, ffn)
    names = list(shapes)
    per = -(-len(names) // shards)
    weight_map = {}
    gen = torch.Generator(device=device).manual_seed(0)
    for s in range(shards):
        part = {}
        for n in names[s * per : (s + 1) * per]:
            shape = shapes[n]
            if len(shape) == 1 and "norm" in n:
                t = torch.ones(shape, dtype=torch.bfloat16, device=device)
            else:
                t = (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 0.02).to(torch.bfloat16)
            part[n] = t.cpu()
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(dest / fn), metadata={"format": "pt"})
        weight_map.update({n: fn for n in part})
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def copy_bandwidth_bytes_per_s() -> float:
    import torch

    n = 2 * 2**30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        b.copy_(a)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del a, b
    torch.cuda.empty_cache()
    times.sort()
    return 2 * n / times[len(times) // 2]  # bytes read + written


def nvidia_smi() -> dict:
    out = subprocess.run(
        ["nvidia-smi",
         "--query-gpu=name,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw,power.limit",
         "--format=csv,noheader,nounits"],
        capture_output=True, text=True,
    ).stdout.strip().splitlines()[0]
    name, used, total, util, temp, power, limit = [x.strip() for x in out.split(",")]
    apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True).stdout.strip()
    return {"name": name, "used_mib": float(used), "total_mib": float(total), "util": util, "temp": temp,
            "power_w": power, "limit_w": limit, "apps": apps}


def monitor_vs_smi(sampler) -> str:
    snap = sampler.sample()
    smi = nvidia_smi()
    g = snap.gpus[0]
    mib = 2**20
    procs = ", ".join(f"{p.pid}{'*' if p.is_self else ''}:{(p.used_bytes or 0) / mib:.0f}MiB"
                      for p in (g.processes or ()))
    return (
        f"  monitor: {g.name} used {g.memory_used / mib:.0f}/{g.memory_total / mib:.0f} MiB ({g.memory_api}) "
        f"util {g.utilization_gpu}% temp {g.temperature_c}C power {g.power_w}/{g.power_limit_w} W procs [{procs}]\n"
        f"  nvidia-smi: {smi['name']} used {smi['used_mib']:.0f}/{smi['total_mib']:.0f} MiB util {smi['util']}% "
        f"temp {smi['temp']}C power {smi['power_w']}/{smi['limit_w']} W apps [{smi['apps']}]\n"
        f"  torch: {[(t.allocated // mib, t.reserved // mib) for t in (snap.torch or ())]} MiB (allocated, reserved)"
    )


TINY = {**CHATGLM3_6B, "ffn_hidden_size": 256, "hidden_size": 128, "kv_channels": 32, "num_attention_heads": 4,
        "num_layers": 2, "padded_vocab_size": 612, "seq_length": 8192, "torch_dtype": "float32"}


class Bench:
    """The run's settings, its deadline and what each part found."""

    def __init__(self, args):
        self.args = args
        self.smoke = args.cpu_smoke
        self.device = "cpu" if self.smoke else "cuda"
        self.started = time.perf_counter()
        self.summary: list[str] = []
        self.rows: list[tuple] = []
        self.bw = 0.0

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def part(self, name: str, fn, *a) -> None:
        if self.left() <= 0:
            self.note(f"{name}: skipped, the {self.args.budget:.0f} s budget is spent")
            return
        print(f"\n== {name} ({time.perf_counter() - self.started:.0f} s in)", flush=True)
        try:
            fn(*a)
        except Exception as exc:  # noqa: BLE001 - one part failing must not cost the others
            import traceback

            traceback.print_exc()
            self.note(f"{name}: failed: {type(exc).__name__}: {exc}")

    def note(self, line: str) -> None:
        print(line, flush=True)
        self.summary.append(line)

    def worker(self, **options):
        from engine_helpers import EventLog
        from glmtui.engine.worker import InferenceWorker

        if self.smoke and options.get("compiled_decode"):
            options.setdefault("compile_backend", "eager")  # the real path, traced; no C++ compile on the CPU
        log = EventLog()
        return InferenceWorker(log, **options).start(), log

    def load(self, w, log, mode: str):
        from glmtui.engine.events import Loaded, LoadProgress

        rid = w.load(str(self.folder), mode, self.device)
        loaded = log.wait(rid, timeout=max(60.0, self.left() + 120))
        if not isinstance(loaded, Loaded):
            raise RuntimeError(f"{mode} load failed: {loaded}")
        never_stop(w)
        compiling = [e for e in log.of(rid, LoadProgress) if e.stage.startswith("compiling")]
        warmup = compiling[-1].elapsed if compiling else None
        return loaded, warmup


def never_stop(w) -> None:
    """Zero the stop tokens' output rows (in memory): a random model's greedy reply then never stops early."""
    import torch

    lm = w._loaded
    head = lm.model.get_output_embeddings().weight
    with torch.no_grad():
        head[list(lm.chat_format.stop_token_ids)] = 0


def prompt_of(w, tokens: int, seed: int = 0):
    """A user message whose ChatGLM3 prompt is about ``tokens`` long."""
    from glmtui.engine.events import ChatMessage

    words = "memory bandwidth kernel cache token prefill decode layer tensor model batch stream".split()
    n = max(1, tokens // 3)
    while True:
        text = f"[{seed}] " + " ".join(words[(seed + i) % len(words)] for i in range(n))
        size = len(w._loaded.chat_format.encode_conversation([ChatMessage("user", text)]))
        if size >= tokens:
            return text
        n += max(1, (tokens - size) // 2)


def decode_runs(b: Bench, w, log, label: str, loaded, warmup) -> float:
    from glmtui.engine.events import ChatMessage, Finished, GenerationParams
    from glmtui.engine.memory import measured_footprint_bytes

    messages = [ChatMessage("user", "Write a long story about a GPU.")]
    params = GenerationParams(max_new_tokens=b.args.tokens, temperature=0.0, kv_reuse=False)
    log.wait(w.generate(messages, GenerationParams(max_new_tokens=16, temperature=0.0, kv_reuse=False)), 900)
    runs = [log.wait(w.generate(messages, params), timeout=900) for _ in range(2)]
    assert all(isinstance(r, Finished) for r in runs), runs
    tps = max(r.tokens_per_second or 0.0 for r in runs)
    footprint = measured_footprint_bytes(w._loaded.model)
    bound = b.bw / footprint if b.bw else float("nan")
    ttft = ttft_1000(b, w, log)
    b.rows.append((label, loaded.load_seconds, footprint / 2**20, warmup, runs[0].completion_tokens, tps, bound,
                   tps / bound if b.bw else float("nan"), ttft))
    print(f"  {label}: decode {tps:.1f} tok/s ({[round(r.tokens_per_second or 0, 1) for r in runs]}), "
          f"bound {bound:.1f}, TTFT(1000) {ttft * 1000:.1f} ms, warm-up {warmup}", flush=True)
    return tps


def ttft_1000(b: Bench, w, log) -> float:
    """Median TTFT of a ~1,000-token prompt (3 runs after one warm-up), prefilled whole (KV reuse off)."""
    from glmtui.engine.events import ChatMessage, Finished, GenerationParams

    text = prompt_of(w, 1000 if not b.smoke else 200)
    params = GenerationParams(max_new_tokens=2, temperature=0.0, kv_reuse=False)
    times = []
    for i in range(4):
        done = log.wait(w.generate([ChatMessage("user", text)], params), timeout=600)
        assert isinstance(done, Finished), done
        if i:
            times.append(done.time_to_first_token)
    return statistics.median(times)


def greedy_equality(b: Bench, w) -> None:
    """Compiled vs eager greedy ids on the same loaded weights: the first position where they differ."""
    import torch
    from transformers import StaticCache

    from glmtui.engine.events import ChatMessage

    lm, plan = w._loaded, w._compiled
    if plan is None or not plan.enabled:
        b.note(f"greedy equality: not checked, compiled decode is off ({getattr(plan, 'reason', 'not wanted')})")
        return
    ids = torch.tensor([lm.chat_format.encode_conversation([ChatMessage("user", "Tell me about GPUs.")])],
                       device=lm.model.device)
    n = 64
    common = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(ids),
                  temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        eager = lm.model.generate(ids, **common)[0, ids.shape[1]:].tolist()
        cache = StaticCache(config=lm.model.config, max_cache_len=plan.bucket(ids.shape[1] + n))
        fast = lm.model.generate(ids, cache=cache, compile_config=plan.compile_config, **common)
        fast = fast[0, ids.shape[1]:].tolist()
    differ = next((i for i, (x, y) in enumerate(zip(eager, fast, strict=True)) if x != y), None)
    b.note(f"greedy compiled vs eager ({b.args.mode_label}): " + (
        f"equal for all {n} tokens" if differ is None else f"first difference at token {differ} (equal before it)"))


def turns(b: Bench, w, log) -> None:
    """Turn 10 vs turn 1 TTFT of a conversation growing to ~6,000 tokens, KV reuse on and off (same worker)."""
    from glmtui.engine.events import ChatMessage, Finished, GenerationParams

    per_turn = 540 if not b.smoke else 40
    reply = 64 if not b.smoke else 8
    results = {}
    # The first pass warms every cache bucket the conversation reaches; each pass has texts of its own,
    # so no pass starts from the cache another one left.
    for n, reuse in enumerate((True, False, True)):
        params = GenerationParams(max_new_tokens=reply, temperature=0.0, kv_reuse=reuse)
        history, ttfts, last = [], [], None
        for turn in range(10):
            history.append(ChatMessage("user", prompt_of(w, per_turn, seed=turn + 100 * n)))
            last = log.wait(w.generate(history, params), timeout=600)
            assert isinstance(last, Finished), last
            ttfts.append(last.time_to_first_token)
            history.append(ChatMessage("assistant", last.text))
        results[reuse] = (ttfts, last)
    for reuse, (ttfts, last) in sorted(results.items(), reverse=True):
        b.note(f"turns, KV reuse {'on ' if reuse else 'off'}: turn 1 TTFT {ttfts[0] * 1000:.1f} ms, turn 10 "
               f"{ttfts[-1] * 1000:.1f} ms (prompt {last.prompt_tokens} tokens, {last.cached_tokens} cached): "
               f"turn 10 / turn 1 = {ttfts[-1] / ttfts[0]:.2f}")
    b.turn_ratio = {reuse: t[-1] / t[0] for reuse, (t, _) in results.items()}


def part_bf16(b: Bench, compiled_decode: bool) -> None:
    label = ("bf16 compiled" if compiled_decode else "bf16 eager") if not b.smoke else (
        "fp32 compiled" if compiled_decode else "fp32 eager")
    b.args.mode_label = label
    w, log = b.worker(compiled_decode=compiled_decode)
    try:
        loaded, warmup = b.load(w, log, b.mode16)
        if compiled_decode:
            b.note(f"{label}: load notes {list(loaded.notes)}")
            b.warmup_first = warmup
        tps = decode_runs(b, w, log, label, loaded, warmup)
        b.tps[label] = tps
        if compiled_decode:
            greedy_equality(b, w)
            if b.left() > 0:
                turns(b, w, log)
    finally:
        w.shutdown()
        release()


def part_cached_warmup(b: Bench) -> None:
    """A second process loads the compiled model on the same inductor cache folder: the cached warm-up."""
    cmd = [sys.executable, __file__, "--probe-warmup", "--dir", str(b.folder)] + (["--cpu-smoke"] if b.smoke else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60, b.left() + 60), env=dict(os.environ))
    line = next((x for x in out.stdout.splitlines() if x.startswith("WARMUP ")), None)
    if line is None:
        raise RuntimeError(f"probe gave no figure: {(out.stdout + out.stderr)[-800:]}")
    b.warmup_cached = float(line.split()[1])
    b.note(f"compile warm-up: first {b.warmup_first:.1f} s (empty cache), cached {b.warmup_cached:.1f} s "
           f"(another process, same cache folder {os.environ['TORCHINDUCTOR_CACHE_DIR']})")


def probe_warmup(args) -> int:
    b = Bench(args)
    b.folder = Path(args.dir)
    b.mode16 = "fp32" if b.smoke else "bf16"
    w, log = b.worker(compiled_decode=True)
    loaded, warmup = b.load(w, log, b.mode16)
    print(f"WARMUP {warmup} notes {list(loaded.notes)}")
    w.shutdown()
    return 0


def import_torchao(b: Bench):
    try:
        import torchao  # is it installed?

        return True
    except ImportError:
        pass
    wheels = sorted(Path(b.args.wheels).glob("torchao-*.whl")) if b.args.wheels else []
    if not wheels:
        b.note(f"torchao: not importable and no wheel in {b.args.wheels!r}; its rows are skipped")
        return False
    target = Path(tempfile.mkdtemp(prefix="glmtui-torchao-"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheels[-1])], check=True)
    sys.path.insert(0, str(target))
    import torchao  # noqa: F401 - the installed wheel imports

    return True


def part_torchao(b: Bench, which: str) -> None:
    """torchao weight-only on the loaded bf16 model, then compiled the same way as bf16 (glmtui has no
    torchao mode yet: the model is quantized in place inside the worker)."""
    import torch
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    from glmtui.engine import compiled
    from glmtui.engine.kvreuse import KVSession

    label = f"torchao {which}"
    b.args.mode_label = label
    w, log = b.worker(compiled_decode=False)
    try:
        loaded, _ = b.load(w, log, b.mode16)
        if which == "int8":
            config = Int8WeightOnlyConfig()
        else:
            try:
                config = Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")
            except TypeError:
                config = Int4WeightOnlyConfig(group_size=128)
        quantize_(w._loaded.model, config)
        torch._dynamo.reset()
        w._kv = KVSession()
        plan = compiled.CompiledDecode(w._loaded.model, w._loaded.context_length,
                                       "eager" if b.smoke else None)
        w._compiled = plan
        t0 = time.perf_counter()
        from glmtui.engine.events import ChatMessage, GenerationParams

        log.wait(w.generate([ChatMessage("user", "Hello")], GenerationParams(max_new_tokens=4, temperature=0.0)), 900)
        warmup = time.perf_counter() - t0
        if not plan.enabled:
            b.note(f"{label}: compile fell back to eager: {plan.reason}")
        tps = decode_runs(b, w, log, label, loaded, warmup)
        b.tps[label] = tps
        greedy_equality(b, w)
    finally:
        w.shutdown()
        release()


def part_bnb(b: Bench, mode: str) -> None:
    label = f"bnb {mode}"
    w, log = b.worker()
    try:
        loaded, warmup = b.load(w, log, mode)
        b.tps[label] = decode_runs(b, w, log, label, loaded, warmup)
    finally:
        w.shutdown()
        release()


def release() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/glmtui-chatglm3-6b-random")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--budget", type=float, default=400.0, help="no part starts after this many seconds")
    parser.add_argument("--skip", default="", help="parts to skip: eager,compiled,cached,torchao,bnb")
    parser.add_argument("--bnb", action="store_true", help="also bitsandbytes int8/int4 (glmtui's current modes)")
    parser.add_argument("--wheels", default=str(ROOT / ".cache" / "wheels"), help="folder with a torchao wheel")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shape on the CPU: exercises every part")
    parser.add_argument("--probe-warmup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_warmup:
        return probe_warmup(args)
    if not args.cpu_smoke:
        if shutil.which("nvidia-smi") is None:
            print("bench_gpu: skipped: no NVIDIA GPU here (no nvidia-smi)")
            return 0
        import torch

        if not torch.cuda.is_available():
            print(f"bench_gpu: skipped: torch {torch.__version__} sees no CUDA device")
            return 0
    import torch

    b = Bench(args)
    b.tps = {}
    b.warmup_first = None
    b.turn_ratio = {}
    b.mode16 = "fp32" if b.smoke else "bf16"
    skip = set(filter(None, args.skip.split(",")))
    # A fresh inductor cache for this run: the first compile is a first compile; the probe reuses it.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="glmtui-bench-inductor-")
    from glmtui.engine import compiled

    # One cache bucket for the whole run (8K = the 6B's context): one compile per load, none mid-conversation.
    compiled.BUCKETS = (8192,)
    if b.smoke:
        args.tokens = min(args.tokens, 16)
        args.dir = args.dir + "-tiny"
        print("bench_gpu --cpu-smoke: tiny shape on the CPU, compile backend 'eager'; figures mean nothing")
    else:
        from glmtui.monitor import Sampler

        print("before anything:\n" + monitor_vs_smi(Sampler()))
    t = time.perf_counter()
    b.folder = (write_checkpoint(Path(args.dir)) if not b.smoke
                else write_checkpoint(Path(args.dir), 2, TINY, "cpu"))
    print(f"checkpoint at {b.folder} ({time.perf_counter() - t:.1f}s)")
    if not b.smoke:
        torch.cuda.empty_cache()
        b.bw = copy_bandwidth_bytes_per_s()
        print(f"device copy bandwidth (read+write): {b.bw / 1e12:.2f} TB/s")
    if "eager" not in skip:
        b.part("bf16 eager", part_bf16, b, False)
    if "compiled" not in skip:
        b.part("bf16 compiled", part_bf16, b, True)
        if "cached" not in skip and b.warmup_first is not None:
            b.part("cached warm-up", part_cached_warmup, b)
    if "torchao" not in skip and import_torchao(b):
        for which in ("int8", "int4"):
            if which == "int4" and b.smoke:
                b.note("torchao int4: skipped in --cpu-smoke (its packed layout needs bf16 on CUDA)")
                continue
            b.part(f"torchao {which}", part_torchao, b, which)
    if args.bnb and "bnb" not in skip:
        for mode in ("int8", "int4"):
            b.part(f"bitsandbytes {mode}", part_bnb, b, mode)

    print("\n| mode | load s | footprint MiB | warm-up s | tokens | decode tok/s | bound tok/s | decode / bound | "
          "TTFT 1000-token prompt ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in b.rows:
        warm = f"{r[3]:.1f}" if r[3] is not None else "-"
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.0f} | {warm} | {r[4]} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.3f} | "
              f"{r[8] * 1000:.1f} |")
    print("\n" + "\n".join(b.summary))
    base = b.tps.get(f"{'fp32' if b.smoke else 'bf16'} compiled")
    head = [f"{r[0]} {r[7]:.2f} of bound" for r in b.rows]
    if base:
        head += [f"{k} {v / base:.2f}x bf16 compiled" for k, v in b.tps.items() if k.startswith(("torchao", "bnb"))]
    if b.turn_ratio:
        head.append(f"turn10/turn1 TTFT reuse on {b.turn_ratio.get(True, float('nan')):.2f} "
                    f"off {b.turn_ratio.get(False, float('nan')):.2f}")
    print(f"\nHEADLINE ({time.perf_counter() - b.started:.0f} s) " + "; ".join(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
