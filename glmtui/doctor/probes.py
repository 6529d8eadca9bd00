"""torch and the quantizers inspected in a child interpreter with a time limit: a broken or hanging install
becomes a verdict instead of crashing the doctor (or the TUI that shows it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Optional

PROBE_MARK = "GLMTUI-DOCTOR "
DEFAULT_TIMEOUT = 60.0  # importing torch on a loaded machine takes seconds; a broken CUDA init can hang


TORCH_PROBE = r"""
import json, sys, warnings
out = {}
try:
    import torch
except BaseException as e:
    out["import_error"] = (type(e).__name__ + ": " + str(e)).splitlines()[0][:300]
else:
    out["version"] = str(torch.__version__)
    out["cuda"] = torch.version.cuda
    out["hip"] = getattr(torch.version, "hip", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out["available"] = bool(torch.cuda.is_available())
            out["count"] = int(torch.cuda.device_count()) if out["available"] else 0
            out["capabilities"] = [list(torch.cuda.get_device_capability(i)) for i in range(out["count"])]
        except Exception as e:
            out["available"] = False
            out["cuda_error"] = (type(e).__name__ + ": " + str(e)).splitlines()[0][:300]
    if caught and not out.get("cuda_error"):
        out["cuda_error"] = str(caught[0].message).strip().splitlines()[0][:300]
print(MARK + json.dumps(out), flush=True)
"""

QUANT_PROBE = r"""
import json, importlib.metadata as md
out = {}
for name in ("bitsandbytes", "torchao"):
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        out[name] = {"installed": False}
        continue
    try:
        __import__(name)
        out[name] = {"installed": True, "version": version}
    except BaseException as e:
        out[name] = {"installed": True, "version": version,
                     "error": (type(e).__name__ + ": " + str(e)).splitlines()[0][:300]}
print(MARK + json.dumps(out), flush=True)
"""


def run_probe(code: str, *, python: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
              env: Optional[dict] = None) -> tuple[Optional[dict], Optional[str]]:
    """(the probe's JSON, None) or (None, why it gave none): run in a fresh interpreter, in a
    session of its own so a timeout ends it and anything it started."""
    argv = [python or sys.executable, "-c", f"MARK = {PROBE_MARK!r}\n" + code]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", env=env, start_new_session=True)
    except OSError as exc:
        return None, f"cannot start {argv[0]}: {exc}"
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()
        return None, f"no answer within {timeout:g} s (a hanging import or CUDA initialisation)"
    for line in reversed(out.splitlines()):
        if line.startswith(PROBE_MARK):
            try:
                return json.loads(line[len(PROBE_MARK):]), None
            except ValueError:
                break
    if proc.returncode and proc.returncode < 0:
        try:
            why = f"killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            why = f"killed by signal {-proc.returncode}"
    else:
        why = f"exit code {proc.returncode}"
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    return None, f"{why}: {lines[-1][:300]}" if lines else why
