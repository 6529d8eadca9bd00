"""How long `glmtui fit FOLDER` takes, cold (no stored count), answered from the store at the same
context, and at another context after that count (the count is stored whatever the context).

CPU seconds (user + sys of the whole command, children included) are the figure to compare on a
shared machine; wall seconds are printed beside them.  The cold answer is split into the imports the
meta-device count needs, as cumulative stages (a fresh interpreter each: glmtui's CLI, torch,
transformers' package, its models package (which reads every model's files for their ``__all__``),
modeling_utils, the model's own modeling module through transformers' auto mapping), and what the cold
``fit`` spends once all of those are imported (measured inside that interpreter: the meta build, the
count, the store, the output), so that the part the prediction itself spends is visible.

    python bench/bench_fit.py [--rounds 3] [--arch glm4-moe-lite]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models  # noqa: E402 - after the sys.path setup


def import_stages(model_type: str) -> dict[str, str]:
    """Cumulative imports of the cold count, each stage's code including the ones before it."""
    model_type = "glm" if model_type == "chatglm" else model_type  # ChatGLM3 is counted as GlmForCausalLM
    stages = [
        ("python + glmtui.cli", "import glmtui.cli"),
        ("+ import torch", "import torch"),
        ("+ transformers (package)", "import transformers"),
        ("+ transformers.models (file scan)", "from transformers import CONFIG_MAPPING"),
        ("+ transformers.modeling_utils", "import transformers.modeling_utils"),
        ("+ the model's modeling module", "from transformers.models.auto.modeling_auto import "
         f"MODEL_FOR_CAUSAL_LM_MAPPING as M; M[CONFIG_MAPPING[{model_type!r}]]"),
    ]
    out, code = {}, []
    for label, line in stages:
        code.append(line)
        out[label] = "; ".join(code)
    return out


def after_imports(code: str, fit_args: list[str], env: dict[str, str], out: Path) -> tuple[float, float]:
    """(CPU, wall) seconds of the cold ``fit`` in an interpreter that already ran ``code`` (every import)."""
    script = (f"{code}\nimport json, sys, time\nfrom glmtui import cli\n"
              "c, w = time.process_time(), time.perf_counter()\n"
              f"rc = cli.main({fit_args!r})\n"
              f"open({str(out)!r}, 'w').write(json.dumps([time.process_time() - c, time.perf_counter() - w, rc]))\n")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    cpu, wall, rc = json.loads(out.read_text())
    if rc:
        raise SystemExit(f"fit exited {rc} after the imports")
    return cpu, wall


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds of the child, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arch", default="glm4-moe-lite", choices=sorted(tiny_models.ARCHITECTURES))
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_models.ARCHITECTURES[args.arch](Path(tmp) / args.arch)
        fit_args = ["fit", str(folder), "--json"]
        fit = [sys.executable, "-m", "glmtui.cli", *fit_args]
        stages = import_stages(json.loads((folder / "config.json").read_text())["model_type"])
        for n in range(args.rounds):
            env = {**os.environ, "GLMTUI_HOME": str(Path(tmp) / f"home-{n}")}  # nothing stored yet
            rows.setdefault("fit, cold", []).append(timed(fit, env))
            rows.setdefault("fit, stored", []).append(timed(fit, env))
            rows.setdefault("fit --context 4096 after the count", []).append(timed(fit + ["--context", "4096"], env))
            for label, code in stages.items():
                rows.setdefault(label, []).append(timed([sys.executable, "-c", code], env))
            env = {**env, "GLMTUI_HOME": str(Path(tmp) / f"home-{n}-imported")}
            rows.setdefault("fit, cold, after all those imports", []).append(
                after_imports(list(stages.values())[-1], fit_args, env, Path(tmp) / "after.json"))
    print(f"glmtui fit on a tiny {args.arch} folder, {args.rounds} rounds (medians; min-max CPU)")
    print(f"{'':38} {'CPU s':>7} {'wall s':>7}  CPU range")
    for label, values in rows.items():
        cpu = [c for c, _ in values]
        wall = [w for _, w in values]
        print(f"{label:38} {statistics.median(cpu):7.2f} {statistics.median(wall):7.2f}  "
              f"{min(cpu):.2f}-{max(cpu):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
