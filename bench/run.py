"""Run the benchmarks: `bash dev.sh bench [name ...]` (default: all that run on this machine).

Each benchmark prints its own figures and ratios against a baseline measured
in the same run; this runner only sequences them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "stream": ["bench_stream.py"],
    "long": ["bench_long_reply.py"],
    "startup": ["bench_startup.py"],
    "history": ["bench_history.py"],
    "memory": ["bench_memory.py"],
    "gpu": ["bench_gpu.py"],
    "switch": ["bench_switch.py"],
    "kvreuse": ["bench_kvreuse.py"],
}
# Opt-in only (installs vLLM's CPU build into .cache/peer; minutes per run): `bash dev.sh bench peer`.
OPT_IN = {"peer": ["bench_peer.py"]}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    known = {**BENCHMARKS, **OPT_IN}
    failed = []
    for name in names:
        if name not in known:
            print(f"unknown benchmark {name!r}; choose from {', '.join(known)}")
            return 2
        script, *extra = known[name]
        if not (HERE / script).exists():
            print(f"== {name}: {script} not present yet, skipped")
            continue
        print(f"== {name} ({script})", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *extra]).returncode != 0:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
