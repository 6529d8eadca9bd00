"""``glmtui doctor``: the deployment checks, each with a verdict and a one-line fix.

Checks: the NVIDIA driver (NVML), the torch build against the driver, the GPUs'
compute capability against the quantization backends, bitsandbytes / torchao,
transformers against what each catalogue model needs, free disk in the model
folder, the hubs (Hugging Face, a configured mirror, ModelScope), with
``--model`` whether that model is here or a hub that answered has it, and write
access to the history folder.

A verdict is "ok", "warn" (works, but not as well as it could) or "fail"
(something the user asked for, or glmtui itself, cannot work); the command
exits 1 when any check fails. torch and the quantizers are inspected in a
child interpreter with a time limit, so a broken or hanging install becomes a
verdict instead of crashing the doctor (or the TUI that shows it). No torch
import in this process.

The rooms: verdicts (Check, Request), facts (NVML, transformers' install), probes (child interpreters),
gpu / quant / local / hubs / model (the checks), runner (all of them in order), report (the command's text, JSON,
exit code).
"""

from .facts import DriverFacts, GpuFacts, nvml_facts, transformers_facts
from .gpu import BF16_NATIVE, INT8_TENSOR_CORES, check_capability, check_driver, check_torch
from .hubs import HF_PUBLIC, MODELSCOPE_PUBLIC, NET_TIMEOUT, check_hub, hub_endpoints
from .local import ARCH_PACKAGE, TRANSFORMERS_TESTED, check_disk, check_history, check_transformers
from .model import check_model
from .probes import DEFAULT_TIMEOUT, PROBE_MARK, QUANT_PROBE, TORCH_PROBE, run_probe
from .quant import check_quantizers
from .report import exit_code, format_text, run_doctor, summary, to_json
from .runner import run_checks
from .verdicts import VERDICTS, Check, Request

__all__ = [
    "ARCH_PACKAGE", "BF16_NATIVE", "DEFAULT_TIMEOUT", "HF_PUBLIC", "INT8_TENSOR_CORES", "MODELSCOPE_PUBLIC",
    "NET_TIMEOUT", "PROBE_MARK", "QUANT_PROBE", "TORCH_PROBE", "TRANSFORMERS_TESTED", "VERDICTS",
    "Check", "DriverFacts", "GpuFacts", "Request",
    "check_capability", "check_disk", "check_driver", "check_history", "check_hub", "check_quantizers",
    "check_model", "check_torch", "check_transformers", "exit_code", "format_text", "hub_endpoints", "nvml_facts",
    "run_checks", "run_doctor", "run_probe", "summary", "to_json", "transformers_facts",
]
