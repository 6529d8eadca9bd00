"""GPU benchmark: a random-weight model of ChatGLM3-6B's exact shape, through glmtui.

Run only on a machine with an NVIDIA GPU (it exits early otherwise). It writes
a ChatGLM3-layout checkpoint (safetensors shards, the real 6B config) with
random bf16 weights, then for bf16, int8 and int4 loads it through glmtui's
InferenceWorker and reports: load time, VRAM (NVML v2 used, torch allocated),
tokens/s at batch 1 through the worker and through plain ``model.generate`` on
the same loaded model (the worker's overhead ratio), and the ratio to the
memory-bandwidth bound (model bytes / measured copy bandwidth). After each
unload it reports what stayed resident. It also compares glmtui's monitor
with ``nvidia-smi`` at the same moment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
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


def write_checkpoint(dest: Path, shards: int = 7) -> Path:
    import torch
    from safetensors.torch import save_file

    import tiny_models

    if (dest / "config.json").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    tiny_models.train_sentencepiece(dest)
    c = CHATGLM3_6B
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
    gen = torch.Generator(device="cuda").manual_seed(0)
    for s in range(shards):
        part = {}
        for n in names[s * per : (s + 1) * per]:
            shape = shapes[n]
            if len(shape) == 1 and "norm" in n:
                t = torch.ones(shape, dtype=torch.bfloat16, device="cuda")
            else:
                t = (torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32) * 0.02).to(torch.bfloat16)
            part[n] = t.cpu()
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(dest / fn), metadata={"format": "pt"})
        weight_map.update({n: fn for n in part})
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (dest / "config.json").write_text(json.dumps(CHATGLM3_6B, indent=2))
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
        ["nvidia-smi", "--query-gpu=name,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw,power.limit",
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
    procs = ", ".join(f"{p.pid}{'*' if p.is_self else ''}:{(p.used_bytes or 0) / mib:.0f}MiB" for p in (g.processes or ()))
    return (
        f"  monitor: {g.name} used {g.memory_used / mib:.0f}/{g.memory_total / mib:.0f} MiB ({g.memory_api}) "
        f"util {g.utilization_gpu}% temp {g.temperature_c}C power {g.power_w}/{g.power_limit_w} W procs [{procs}]\n"
        f"  nvidia-smi: {smi['name']} used {smi['used_mib']:.0f}/{smi['total_mib']:.0f} MiB util {smi['util']}% "
        f"temp {smi['temp']}C power {smi['power_w']}/{smi['limit_w']} W apps [{smi['apps']}]\n"
        f"  torch: {[(t.allocated // mib, t.reserved // mib) for t in (snap.torch or ())]} MiB (allocated, reserved)"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/glmtui-chatglm3-6b-random")
    parser.add_argument("--modes", default="bf16,int8,int4")
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("bench_gpu: no NVIDIA GPU here; skipped")
        return 0
    import torch

    from engine_helpers import start_worker
    from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded
    from glmtui.monitor import Sampler

    sampler = Sampler()
    print("before anything:\n" + monitor_vs_smi(sampler))
    t = time.perf_counter()
    folder = write_checkpoint(Path(args.dir))
    print(f"checkpoint written in {time.perf_counter() - t:.1f}s at {folder}")
    torch.cuda.empty_cache()
    bw = copy_bandwidth_bytes_per_s()
    print(f"device copy bandwidth (read+write): {bw / 1e12:.2f} TB/s")
    w, log = start_worker()
    messages = [ChatMessage("user", "Write a long story about a GPU.")]
    params = GenerationParams(max_new_tokens=args.tokens, temperature=1.0, top_p=1.0, seed=0)
    rows = []
    mib = 2**20
    base_used = sampler.sample().gpus[0].memory_used
    for mode in args.modes.split(","):
        loaded = log.wait(w.load(str(folder), mode, "cuda"), timeout=900)
        if not isinstance(loaded, Loaded):
            print(f"{mode}: load failed: {loaded}")
            continue
        snap = sampler.sample()
        used = snap.gpus[0].memory_used
        print(f"{mode} loaded:\n" + monitor_vs_smi(sampler))
        log.wait(w.generate(messages, GenerationParams(max_new_tokens=64, temperature=1.0, seed=1)))  # warm-up
        runs = [log.wait(w.generate(messages, params), timeout=900) for _ in range(2)]
        assert all(isinstance(r, Finished) for r in runs), runs
        print(f"  worker runs tok/s: {[round(r.completion_tokens / r.total_seconds, 1) for r in runs]}")
        done = min(runs, key=lambda r: r.total_seconds / max(1, r.completion_tokens))
        # The same loaded model through plain generate(), same prompt and length.
        lm = w._loaded
        ids = torch.tensor([lm.chat_format.encode_conversation(messages)], device="cuda")
        torch.manual_seed(0)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(ids, max_new_tokens=done.completion_tokens, min_new_tokens=done.completion_tokens,
                                    do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
        torch.cuda.synchronize()
        plain_s = time.perf_counter() - t0
        plain_tps = (out.shape[1] - ids.shape[1]) / plain_s
        worker_tps = done.completion_tokens / (done.total_seconds - 0.0)
        del lm, out
        # At batch 1 every weight byte is read once per token: traffic = model bytes per token.
        bound_tps = bw / loaded.footprint_bytes
        rows.append((mode, loaded.load_seconds, loaded.footprint_bytes / mib, (used - base_used) / mib,
                     torch.cuda.memory_allocated() / mib, done.completion_tokens, done.time_to_first_token,
                     worker_tps, plain_tps, worker_tps / plain_tps, bound_tps, done.tokens_per_second / bound_tps))
        unloaded = log.wait(w.unload())
        after = sampler.sample().gpus[0].memory_used
        print(f"{mode} unloaded: NVML used {after / mib:.0f} MiB (baseline {base_used / mib:.0f}); "
              f"torch reserved after empty_cache {unloaded.device_bytes_after / mib if unloaded.device_bytes_after is not None else 'n/a'} MiB")
    w.shutdown()
    print()
    print("mode  load_s  footprint_MiB  nvml_delta_MiB  torch_alloc_MiB  tokens  ttft_s  worker_tok/s  plain_tok/s  "
          "worker/plain  bw_bound_tok/s  decode/bound")
    for r in rows:
        print(f"{r[0]:5} {r[1]:7.1f} {r[2]:14.0f} {r[3]:15.0f} {r[4]:16.0f} {r[5]:7d} {r[6]:7.3f} {r[7]:13.1f} "
              f"{r[8]:12.1f} {r[9]:13.3f} {r[10]:15.1f} {r[11]:13.3f}")
    if rows:
        print("\nHEADLINE decode / bandwidth bound: " + ", ".join(f"{r[0]} {r[11]:.2f}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
