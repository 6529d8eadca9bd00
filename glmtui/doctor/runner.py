"""Every doctor check in a fixed order; the slow ones (child interpreters, network) run in parallel."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from ..config import Paths, default_paths
from .facts import AUTO, nvml_facts
from .gpu import check_capability, check_driver, check_torch
from .hubs import NET_TIMEOUT, check_hub, hub_endpoints
from .local import check_disk, check_history, check_transformers
from .model import check_model
from .probes import DEFAULT_TIMEOUT, QUANT_PROBE, TORCH_PROBE, run_probe
from .quant import check_quantizers
from .verdicts import Check, Request


def run_checks(request: Optional[Request] = None, *, paths: Optional[Paths] = None, nvml: Any = AUTO,
               python: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT, net_timeout: float = NET_TIMEOUT,
               env: Optional[dict] = None) -> list[Check]:
    """Every check, in a fixed order; the slow ones (child interpreters, network) run in parallel."""
    request = request or Request()
    paths = paths or default_paths()
    hubs = hub_endpoints(paths.config_file, env)
    mirrored = any(k == "hub_mirror" for k, *_ in hubs)
    with ThreadPoolExecutor(max_workers=2 + len(hubs)) as pool:
        torch_future = pool.submit(run_probe, TORCH_PROBE, python=python, timeout=timeout, env=env)
        quant_future = pool.submit(run_probe, QUANT_PROBE, python=python, timeout=timeout, env=env)
        hub_futures = [pool.submit(check_hub, key, title, url, where, mirrored, net_timeout)
                       for key, title, url, where in hubs]
        driver = nvml_facts(nvml)
        local = [check_transformers(request), check_disk(paths, request), check_history(paths)]
        torch_probe, torch_problem = torch_future.result()
        quant_probe, quant_problem = quant_future.result()
        hub_checks = [f.result() for f in hub_futures]
    model = check_model(request, paths, hub_checks)  # --model: here, or a hub that answered has it
    return [
        check_driver(driver, request),
        check_torch(torch_probe, torch_problem, driver, request),
        check_capability(driver, torch_probe, request),
        *check_quantizers(quant_probe, quant_problem, request, driver, torch_probe),
        local[0],
        local[1],
        *hub_checks,
        *([model] if model is not None else []),
        local[2],
    ]
