"""bench/run.py, the runner `bash dev.sh bench` calls: the README names every benchmark it runs, and options
after a name reach that benchmark only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "bench" / "run.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=120)


def test_the_readme_names_every_benchmark_the_runner_knows():
    sys.path.insert(0, str(RUN.parent))
    try:
        import run
    finally:
        sys.path.remove(str(RUN.parent))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(\w+)`", section)) | set(re.findall(r"dev\.sh bench (\w+)", section))
    assert set(run.BENCHMARKS) | set(run.OPT_IN) <= named, named
    for name in run.BENCHMARKS:
        assert (RUN.parent / run.BENCHMARKS[name][0]).is_file(), name


def test_options_go_to_the_one_benchmark_named():
    shown = _run("fit", "--help")
    assert shown.returncode == 0 and "bench_fit.py" in shown.stdout and "--rounds" in shown.stdout
    two = _run("fit", "stream", "--help")
    assert two.returncode == 2 and "options go to one benchmark" in two.stdout
    assert _run("nope").returncode == 2
