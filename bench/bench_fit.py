"""How long `glmtui fit FOLDER` takes, cold (no stored count), answered from the store at the same
context, and at another context after that count (the count is stored whatever the context).

CPU seconds (user + sys of the whole command, children included) are the figure to compare on a
shared machine; wall seconds are printed beside them.  The cold answer is split into what importing
torch and transformers' model code costs on its own (a fresh interpreter each), so that the part the
prediction itself spends is visible.

    python bench/bench_fit.py [--rounds 3] [--arch glm4-moe-lite]
"""

from __future__ import annotations

import argparse
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

IMPORTS = {
    "python + glmtui.cli": "import glmtui.cli",
    "import torch": "import torch",
    "torch + transformers.modeling_utils": "import torch, transformers.modeling_utils",
}


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
        fit = [sys.executable, "-m", "glmtui.cli", "fit", str(folder), "--json"]
        for n in range(args.rounds):
            env = {**os.environ, "GLMTUI_HOME": str(Path(tmp) / f"home-{n}")}  # nothing stored yet
            rows.setdefault("fit, cold", []).append(timed(fit, env))
            rows.setdefault("fit, stored", []).append(timed(fit, env))
            rows.setdefault("fit --context 4096 after the count", []).append(timed(fit + ["--context", "4096"], env))
            for label, code in IMPORTS.items():
                rows.setdefault(label, []).append(timed([sys.executable, "-c", code], env))
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
