"""Where a loaded model's layers are, and how to spread them over several GPUs.

No torch import: the functions read what a model already carries (``hf_device_map``,
its parameters' devices) or plain numbers, so they run anywhere and test without a GPU.

* :func:`placement_of` / :func:`placement_from_map`: which device holds each decoder layer
  (GPU n, CPU, disk) and whether anything was offloaded off the GPUs, in one line.
* :func:`balanced_max_memory`: ``max_memory`` for ``device_map="auto"`` with several GPUs,
  so accelerate spreads the layers in proportion to each GPU's *free* memory (its
  default fills GPU 0 first) and keeps room on each for the CUDA context and the
  KV cache and activations of the layers it holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)")
GPU_RESERVE_BYTES = 700 * 1024 * 1024  # CUDA context + workspaces per GPU (memory.CUDA_CONTEXT_BYTES)


def device_name(value: Any) -> str:
    """A device_map value or torch device as text: 0 -> "cuda:0", "cpu", "disk", "cuda:1"."""
    if isinstance(value, int):
        return f"cuda:{value}"
    text = str(value)
    return "cuda:0" if text == "cuda" else text


@dataclass(frozen=True)
class Placement:
    #: runs of consecutive decoder layers on one device: (device, first layer, last layer)
    runs: tuple[tuple[str, int, int], ...]
    #: bytes of weights per device (parameters and buffers), when known
    bytes_per_device: tuple[tuple[str, int], ...] = ()

    @property
    def devices(self) -> tuple[str, ...]:
        seen: list[str] = []
        for dev, *_ in self.runs:
            if dev not in seen:
                seen.append(dev)
        for dev, _ in self.bytes_per_device:
            if dev not in seen:
                seen.append(dev)
        return tuple(seen)

    @property
    def offloaded(self) -> tuple[str, ...]:
        """The CPU/disk devices holding weights while a GPU is used (each token then crosses to them)."""
        devs = self.devices
        if not any(d.startswith("cuda") for d in devs):
            return ()
        return tuple(d for d in devs if d in ("cpu", "disk"))

    def layers_on(self, device: str) -> int:
        return sum(last - first + 1 for dev, first, last in self.runs if dev == device)

    def summary(self) -> str:
        """One line: "all 40 layers on cuda:0" or "layers 0-29 on cuda:0, 30-39 on cpu — offloaded ..."."""
        if not self.runs:
            devs = self.devices
            return f"on {', '.join(devs)}" if devs else "placement unknown"
        total = sum(last - first + 1 for _, first, last in self.runs)
        if len(self.runs) == 1:
            text = f"all {total} layers on {self.runs[0][0]}"
        else:
            text = "layers " + ", ".join(
                (f"{first}-{last}" if last > first else f"{first}") + f" on {dev}" for dev, first, last in self.runs)
        off = self.offloaded
        if off:
            n = sum(self.layers_on(d) for d in off)
            text += (f" — OFFLOADED: {n} of {total} layers on {' and '.join(off)}, every token waits for them "
                     "(much slower than on the GPU)")
        return text


def _runs(layer_devices: Mapping[int, str]) -> tuple[tuple[str, int, int], ...]:
    runs: list[list] = []
    for index in sorted(layer_devices):
        dev = layer_devices[index]
        if runs and runs[-1][0] == dev and runs[-1][2] == index - 1:
            runs[-1][2] = index
        else:
            runs.append([dev, index, index])
    return tuple((d, a, b) for d, a, b in runs)


def placement_from_map(device_map: Mapping[str, Any], layer_count: Optional[int] = None) -> Placement:
    """From an accelerate/transformers ``hf_device_map`` ({module name: device}).  A module above the
    layers (``"model": 0`` or ``"": "cpu"``) places every layer under it (``layer_count`` of them)."""
    layers: dict[int, str] = {}
    whole: Optional[str] = None
    for name, value in device_map.items():
        m = _LAYER.search(name)
        if m:
            layers.setdefault(int(m.group(1)), device_name(value))
        elif name in ("", "model", "model.layers", "transformer", "model.decoder"):
            whole = device_name(value)
    if whole is not None and layer_count:
        for i in range(layer_count):
            layers.setdefault(i, whole)
    others = sorted({device_name(v) for v in device_map.values()})
    return Placement(_runs(layers), tuple((d, 0) for d in others if d not in layers.values()))


def placement_of(model: Any) -> Placement:
    """Where ``model``'s layers are: its ``hf_device_map`` when accelerate dispatched it (offloaded
    modules show there as "cpu"/"disk"), else its parameters' devices."""
    layer_count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    device_map = getattr(model, "hf_device_map", None)
    sizes: dict[str, int] = {}
    layers: dict[int, str] = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        dev = device_name(tensor.device)
        if dev == "meta":  # accelerate's offloaded weights are meta on the module
            continue
        sizes[dev] = sizes.get(dev, 0) + tensor.numel() * tensor.element_size()
        m = _LAYER.search(name)
        if m:
            layers.setdefault(int(m.group(1)), dev)
    if isinstance(device_map, Mapping) and device_map:
        placed = placement_from_map(device_map, layer_count)
        return Placement(placed.runs, tuple(sorted(sizes.items())) or placed.bytes_per_device)
    return Placement(_runs(layers), tuple(sorted(sizes.items())))


def balanced_max_memory(
    free_bytes: Sequence[int],
    weight_bytes: int,
    *,
    per_gpu_reserve: int = GPU_RESERVE_BYTES,
    runtime_fraction: float = 0.10,
    cpu_bytes: Optional[int] = None,
    largest_module_bytes: int = 0,
) -> dict[Any, int]:
    """``max_memory`` ({gpu index: bytes, "cpu": bytes}) for ``device_map="auto"`` over several GPUs.

    Each GPU may hold at most its free memory less ``per_gpu_reserve`` and a
    ``runtime_fraction`` of what it holds for the KV cache and activations.  When the
    weights fit in that, each GPU's cap is its share of the weights in proportion to its
    usable memory, plus 5 % and ``largest_module_bytes`` (accelerate places whole modules and
    keeps the largest one's size free on the first GPU): the layers spread by free memory.
    When they do not fit, every GPU is filled
    to its usable memory and the rest may go to ``cpu_bytes`` of host RAM (offload,
    reported loudly after the load).  A GPU with no usable memory gets 0.
    """
    usable = [max(0, int((int(f) - per_gpu_reserve) / (1.0 + runtime_fraction))) for f in free_bytes]
    total = sum(usable)
    out: dict[Any, int] = {}
    if total and weight_bytes <= total:
        for i, u in enumerate(usable):
            share = weight_bytes * u / total
            out[i] = min(u, int(share * 1.05 + largest_module_bytes)) if u else 0
    else:
        out.update(enumerate(usable))
    if cpu_bytes is not None:
        out["cpu"] = max(0, int(cpu_bytes))
    return out
