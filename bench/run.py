"""Run the benchmarks: `bash dev.sh bench [name ...]` (default: all that run on this machine);
`bash dev.sh bench NAME --option ...` passes the options to that one benchmark (`--help` lists them).

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
    "fit": ["bench_fit.py"],
}
# Opt-in only (installs vLLM's CPU build into .cache/peer; minutes per run): `bash dev.sh bench peer`.
OPT_IN = {"peer": ["bench_peer.py"]}


def main(argv: list[str]) -> int:
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, options = argv[:first_option] or list(BENCHMARKS), argv[first_option:]
    known = {**BENCHMARKS, **OPT_IN}
    if options and len(names) != 1:
        print("options go to one benchmark: bash dev.sh bench NAME --option ...")
        return 2
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
        if subprocess.run([sys.executable, str(HERE / script), *extra, *options]).returncode != 0:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
