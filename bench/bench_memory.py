"""Benchmark 5: memory and speed per quantization mode, beside the prediction.

A tiny-but-not-trivial native GLM (hidden 1024, 8 layers by default) is built
offline, then loaded through glmtui's loader in every mode that runs here.
For each mode: measured footprint (unique storages), the prediction from
glmtui.engine.memory computed from config.json alone, their ratio, load time,
and greedy decode tokens/s through the worker, with fp32 as the baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--modes", default="fp32,bf16,fp16,int8,int4")
    args = parser.parse_args()

    import tiny_models
    from engine_helpers import start_worker
    from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded
    from glmtui.engine.memory import predict_for_dir

    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_models.build_native_glm(
            Path(tmp) / "glm", hidden=args.hidden, layers=args.layers, heads=args.hidden // 64,
            kv_heads=2, head_dim=64, ffn=args.hidden * 3, context=4096,
        )
        modes = tuple(args.modes.split(","))
        predictions = predict_for_dir(folder, modes, device="cpu")
        w, log = start_worker()
        rows = []
        params = GenerationParams(max_new_tokens=args.tokens, temperature=0.7, seed=0)
        messages = [ChatMessage("user", "Write a long story about a terminal.")]
        for mode in modes:
            loaded = log.wait(w.load(str(folder), mode, "cpu"), timeout=600)
            if not isinstance(loaded, Loaded):
                rows.append((mode, None, None, None, None, None, getattr(loaded, "message", str(loaded))))
                continue
            log.wait(w.generate(messages, GenerationParams(max_new_tokens=4, temperature=0.7, seed=0)))
            done = log.wait(w.generate(messages, params), timeout=600)
            assert isinstance(done, Finished), done
            tps = done.completion_tokens / done.total_seconds
            rows.append((mode, loaded.footprint_bytes, predictions[mode].weight_bytes, loaded.load_seconds, tps,
                         done.completion_tokens, ""))
        w.shutdown()
    base = next((r for r in rows if r[1]), None)
    mib = 2**20
    print(f"model: GLM hidden {args.hidden}, {args.layers} layers; baseline = {base[0] if base else '-'}")
    print("mode  measured_MiB  predicted_MiB  measured/predicted  size_vs_base  load_s  tok/s  speed_vs_base  note")
    for mode, measured, predicted, load_s, tps, _, note in rows:
        if measured is None:
            print(f"{mode:5} {'-':>12} {'-':>14} {'-':>19} {'-':>13} {'-':>7} {'-':>6} {'-':>14}  {note}")
            continue
        print(f"{mode:5} {measured / mib:12.1f} {predicted / mib:14.1f} {measured / predicted:19.3f} "
              f"{measured / base[1]:13.3f} {load_s:7.2f} {tps:6.1f} {tps / base[4]:14.3f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
