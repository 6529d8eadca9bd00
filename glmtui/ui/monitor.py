"""The monitor pane: GPU rows (NVML) and host memory, with sparkline history.

Everything is drawn from one :class:`glmtui.monitor.MonitorSnapshot` into a
single Rich renderable, so a tick costs one widget update. Sampling happens
elsewhere (a thread worker in the app calls ``Sampler.sample``); this module
only formats. No torch here: torch figures come inside the snapshot.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

from rich.console import Group
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from glmtui.monitor import GpuSnapshot, HostSnapshot, MonitorSnapshot

from .steady import SteadyStatic

if TYPE_CHECKING:
    from .engine_metrics import MetricsServer

NA = "n/a"
BLOCKS = "▁▂▃▄▅▆▇█"


def fmt_bytes(n: Optional[float]) -> str:
    """Binary units, 3 significant-ish digits: 512 MiB, 12.3 GiB; None -> n/a."""
    if n is None:
        return NA
    n = float(n)
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def process_rss() -> Optional[int]:
    """This process's resident memory now (psutil; None when it cannot tell). Cheap: one /proc read."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - no psutil, or a platform without the figure
        return None


def fmt_pair(used: Optional[int], total: Optional[int]) -> str:
    if used is None and total is None:
        return NA
    if total is None:
        return fmt_bytes(used)
    if used is None:
        return f"{NA} / {fmt_bytes(total)}"
    # one unit for both numbers, from the total
    units = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20))
    unit, scale = next(((u, s) for u, s in units if total >= s), ("KiB", 1024))
    return f"{used / scale:.1f}/{total / scale:.1f} {unit}"


def fmt_num(value: Optional[float], suffix: str = "", digits: int = 0) -> str:
    if value is None:
        return NA
    return f"{value:.{digits}f}{suffix}"


def sparkline(values: Sequence[Optional[float]], width: int, top: Optional[float] = None) -> str:
    """Block-character sparkline of the last ``width`` values (None -> space)."""
    if width <= 0:
        return ""
    tail = list(values)[-width:]
    known = [v for v in tail if v is not None]
    if not known:
        return " " * width
    hi = top if top else max(known)
    if not hi or hi <= 0:
        hi = 1.0
    out = []
    for v in tail:
        if v is None:
            out.append(" ")
            continue
        level = int(round(max(0.0, min(1.0, v / hi)) * (len(BLOCKS) - 1)))
        out.append(BLOCKS[level])
    return "".join(out).rjust(width)


def bar(fraction: Optional[float], width: int) -> Text:
    if width <= 0:
        return Text()
    if fraction is None:
        return Text("·" * width, style="dim")
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    style = "green" if fraction < 0.7 else ("yellow" if fraction < 0.9 else "red")
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim")


def _state_line(snapshot: MonitorSnapshot) -> Optional[Text]:
    if snapshot.nvml_state == "ok":
        return None
    message = snapshot.message or {
        "no_gpu": "no NVIDIA GPU: host view only",
        "no_library": "GPU monitoring unavailable (nvidia-ml-py missing)",
        "error": "NVML error",
    }.get(snapshot.nvml_state, snapshot.nvml_state)
    style = "bold yellow" if snapshot.nvml_state in ("error", "no_library") else "bold"
    return Text(message, style=style)


def gpu_lines(gpu: GpuSnapshot, snapshot: MonitorSnapshot, width: int, loaded: Any = None) -> list[Text]:
    title = Text(f"GPU{gpu.index} ", style="bold")
    if gpu.state == "lost":
        return [title + Text(gpu.name or "", style="bold") + Text(" lost", style="bold red"),
                Text("  fell off the bus or the driver reset", style="red")]
    title.append(gpu.name or NA, style="bold")
    lines = [title]
    frac = gpu.memory_fraction
    mem = Text("  mem  ")
    mem.append(fmt_pair(gpu.memory_used, gpu.memory_total))
    if frac is not None:
        mem.append(f" {frac * 100:.0f}%")
    lines.append(mem)
    bar_width = max(4, min(width - 4, 60))
    lines.append(Text("  ") + bar(frac, bar_width))
    held = model_on_gpu(gpu, loaded)
    if held is not None:
        lines.append(held)
    stats = Text("  ")
    stats.append(f"util {fmt_num(gpu.utilization_gpu, '%')}")
    stats.append(f" · {fmt_num(gpu.temperature_c, '°C')}")
    if gpu.power_w is None:
        stats.append(f" · power {NA}")
    else:
        limit = f"/{gpu.power_limit_w:.0f}" if gpu.power_limit_w is not None else ""
        stats.append(f" · {gpu.power_w:.0f}{limit} W")
    lines.append(stats)
    hist = snapshot.history.gpu(gpu.index)
    spark_width = max(4, width - 9)
    if hist is not None and hist.memory_used:
        mem_spark = sparkline(hist.memory_used, spark_width, gpu.memory_total)
        lines.append(Text("  mem  ", style="dim") + Text(mem_spark, style="cyan"))
        util_spark = sparkline(hist.utilization, spark_width, 100)
        lines.append(Text("  util ", style="dim") + Text(util_spark, style="magenta"))
    if snapshot.torch:
        for t in snapshot.torch:
            if t.device == gpu.index:
                lines.append(Text(f"  torch alloc {fmt_bytes(t.allocated)} · reserved {fmt_bytes(t.reserved)}",
                                  style="dim"))
    if gpu.processes is None:
        lines.append(Text(f"  processes {NA}", style="dim"))
    elif not gpu.processes:
        lines.append(Text("  no processes", style="dim"))
    else:
        for proc in gpu.processes[:6]:
            marker = "▶ " if proc.is_self else "  "
            line = Text(f"  {marker}{proc.pid:>7} {(proc.name or '?')[:12]:<12} {fmt_bytes(proc.used_bytes):>9}")
            if proc.is_self:
                line.stylize("bold")
                line.append(" ← glmtui engine" if proc.is_engine else " ← glmtui", style="bold green")
            lines.append(line)
        if len(gpu.processes) > 6:
            lines.append(Text(f"    … {len(gpu.processes) - 6} more", style="dim"))
    for err in gpu.errors[:2]:
        lines.append(Text(f"  {err}", style="yellow"))
    return lines


def host_lines(host: HostSnapshot, snapshot: MonitorSnapshot, width: int, prominent: bool) -> list[Text]:
    if host.error:
        return [Text(f"host: {host.error}", style="yellow")]
    frac = host.ram_used / host.ram_total if host.ram_used is not None and host.ram_total else None
    spark_width = max(4, width - 9)
    hist = snapshot.history
    if prominent:
        lines = [Text("Host RAM", style="bold")]
        used = Text("  used ", style="bold")
        used.append(fmt_pair(host.ram_used, host.ram_total), style="bold")
        if frac is not None:
            used.append(f" {frac * 100:.0f}%")
        used.append(f" · avail {fmt_bytes(host.ram_available)}")
        lines.append(used)
        lines.append(Text("  ") + bar(frac, max(4, min(width - 4, 60))))
        ram_spark = sparkline(hist.ram_used, spark_width, host.ram_total)
        lines.append(Text("  ram  ", style="dim") + Text(ram_spark, style="cyan"))
        rss = Text("glmtui RSS ", style="bold")
        rss.append(fmt_bytes(host.process_rss), style="bold green")
        rss.append(f" · CPU {fmt_num(host.process_cpu_percent, '%')} (all {fmt_num(host.cpu_percent, '%')})")
        lines.append(rss)
        if host.engine_rss is not None:  # the model's process apart (glmtui's figure above counts both)
            ui_rss = host.process_rss - host.engine_rss if host.process_rss is not None else None
            lines.append(Text(f"  engine {fmt_bytes(host.engine_rss)} · CPU {fmt_num(host.engine_cpu_percent, '%')}"
                              f" · UI {fmt_bytes(ui_rss)}", style="green"))
        lines.append(Text("  rss  ", style="dim") + Text(sparkline(hist.process_rss, spark_width), style="green"))
        return lines
    line = Text("Host ", style="bold")
    line.append(f"RAM {fmt_pair(host.ram_used, host.ram_total)}")
    line.append(f" · RSS {fmt_bytes(host.process_rss)}")
    if host.engine_rss is not None:
        line.append(f" (engine {fmt_bytes(host.engine_rss)})")
    if width >= 52:
        line.append(f" · CPU {fmt_num(host.cpu_percent, '%')}")
    return [line]


class DecodeSpeed:
    """The loaded model's measured decode speed: its replies' tokens after the first over their
    decode time, since the load (an engine listener: called on the engine's thread, never blocks).
    Registered before the UI's own listener, a reply's figure is in before the UI hears it ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens = 0
        self._seconds = 0.0

    def note(self, event: Any) -> None:
        from glmtui.engine.events import Finished, Loaded, Unloaded

        with self._lock:
            if isinstance(event, (Loaded, Unloaded)):  # another model: its own speed
                self._tokens, self._seconds = 0, 0.0
            elif isinstance(event, Finished) and event.tokens_per_second and event.completion_tokens > 1:
                decoded = event.completion_tokens - 1  # the first token is the prefill's
                self._tokens += decoded
                self._seconds += decoded / event.tokens_per_second

    @property
    def rate(self) -> Optional[float]:
        """Tokens per second over every reply since the load (None before the first reply)."""
        with self._lock:
            return self._tokens / self._seconds if self._seconds > 0 else None


def offload_warning(loaded, short: bool = False, decode_tok_s: Optional[float] = None) -> Optional[str]:
    """One loud line while the loaded model has layers off the GPU (``Loaded.offloaded``), else None;
    ``short`` for the status bar; ``decode_tok_s``: the replies' measured decode speed, what the offload
    costs in practice."""
    off = tuple(getattr(loaded, "offloaded", None) or ())
    if not off:
        return None
    runs = tuple(getattr(loaded, "layer_devices", None) or ())
    total = sum(last - first + 1 for _, first, last in runs)
    moved = sum(last - first + 1 for dev, first, last in runs if dev in off)
    where = " and ".join(off)
    speed = f" - decoding {decode_tok_s:.1f} tok/s" if decode_tok_s else ""
    if short:
        what = f"⚠ OFFLOADED {moved}/{total} layers to {where}" if total else f"⚠ OFFLOADED to {where}"
        return what + (speed or " (slow)")
    count = f"{moved} of {total} layers " if total else "layers "
    cost = (f"decoding {decode_tok_s:.1f} tok/s (measured on the replies since the load)" if decode_tok_s
            else "slow")
    return f"⚠ OFFLOADED: {count}on {where}, not the GPU — every token waits for them: {cost}"


def _runs_text(runs: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def model_on_gpu(gpu: GpuSnapshot, loaded) -> Optional[Text]:
    """What the loaded model occupies on ``gpu`` (engine/placement.py's figures from the Loaded event):
    its layers and weight bytes there, and what NVML counts for glmtui's processes on it (weights, KV
    cache, CUDA context).  None when the model has nothing on that GPU.  The placement names CUDA
    indices; they are NVML's unless CUDA_VISIBLE_DEVICES reorders the GPUs."""
    if loaded is None:
        return None
    name = f"cuda:{gpu.index}"
    weights = dict(getattr(loaded, "device_bytes", None) or ()).get(name)
    runs = [(a, b) for dev, a, b in (getattr(loaded, "layer_devices", None) or ()) if dev == name]
    if not weights and not runs:
        return None
    line = Text("  model ", style="bold")
    parts = []
    if runs:
        count = sum(b - a + 1 for a, b in runs)
        parts.append(f"{count} layer{'s' if count != 1 else ''} ({_runs_text(runs)})")
    if weights:
        parts.append(f"weights {fmt_bytes(weights)}")
    held = gpu.self_used_bytes
    if held is not None:
        parts.append(f"glmtui holds {fmt_bytes(held)}")
    line.append(" · ".join(parts), style="bold green")
    return line


def render_snapshot(snapshot: Optional[MonitorSnapshot], width: int, warning: Optional[str] = None,
                    loaded: Any = None) -> Group:
    top = [Text(warning, style="bold reverse red")] if warning else []
    if snapshot is None:
        return Group(*top, Text("sampling…", style="dim"))
    lines: list[Text] = top
    state = _state_line(snapshot)
    if state is not None:
        lines.append(state)
    for gpu in snapshot.gpus:
        lines.extend(gpu_lines(gpu, snapshot, width, loaded))
    if snapshot.gpus and snapshot.driver_version:
        lines.append(Text(f"driver {snapshot.driver_version}", style="dim"))
    lines.extend(host_lines(snapshot.host, snapshot, width, prominent=not snapshot.has_gpu))
    return Group(*lines)


class MonitorPane(VerticalScroll, can_focus=True):
    """GPU and host memory; scrollable when there are many GPUs. Given by the app: the replies' measured
    ``decode_speed`` (said with an offload) and the ``metrics_server`` whose /metrics show under it (if any)."""

    DEFAULT_CSS = """
    MonitorPane { height: auto; }
    MonitorPane > #monitor-body { width: 1fr; height: auto; }
    """

    def __init__(self, decode_speed: Optional[DecodeSpeed] = None, metrics_server: Optional[MetricsServer] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.decode_speed = decode_speed
        self.metrics_server = metrics_server
        self.snapshot: Optional[MonitorSnapshot] = None
        self.border_title = "Monitor"
        self.warning: Optional[str] = None  # the loaded model's offload (offload_warning), shown on top
        self.loaded: Any = None  # the Loaded event of the model in memory: its per-GPU figures
        self.on_screen = False  # shown by the last layout (Show / Hide): a hidden pane is not re-rendered

    def compose(self) -> Iterable:
        # a sample that leaves the body's height as it was repaints it without a layout of the screen
        yield SteadyStatic(render_snapshot(None, 40), id="monitor-body")
        from .engine_metrics import RemoteMetricsView  # --endpoint: the server's own /metrics figures

        yield RemoteMetricsView(self.metrics_server, id="remote-metrics")

    def show(self, snapshot: MonitorSnapshot) -> None:
        self.snapshot = snapshot
        self._render_now()

    def show_placement(self, loaded) -> None:
        """Keep the loaded model's offload warning on top and its share of each GPU under that GPU while
        it is loaded (``loaded`` None: gone)."""
        if loaded is not self.loaded:
            self.loaded = loaded
            self._render_now()

    def _decode_rate(self) -> Optional[float]:
        return self.decode_speed.rate if self.decode_speed is not None else None

    def _render_now(self) -> None:
        # a hidden pane (the medium and narrow layouts' other panes) keeps the snapshot; shown, it renders it
        if not self.on_screen:
            return
        # the warning is made at each render: a reply's measured speed shows with the next sample
        self.warning = offload_warning(self.loaded, decode_tok_s=self._decode_rate())
        width = max(20, self.scrollable_content_region.width or self.size.width or 40)
        self.query_one("#monitor-body", Static).update(
            render_snapshot(self.snapshot, width, self.warning, self.loaded))

    def on_resize(self) -> None:
        self._render_now()

    def on_show(self) -> None:
        self.on_screen = True
        self._render_now()

    def on_hide(self) -> None:
        self.on_screen = False

    # convenient for the models pane: free memory where a model would go
    def free_for_model(self, device: str = "auto") -> tuple[str, Optional[int]]:
        """Where a load on ``device`` goes and what is free there: ("cuda", free VRAM) of GPU N for
        "cuda:N" ("cuda" is GPU 0), summed over the GPUs for "auto" (it spreads the layers over all
        of them); ("cpu", available RAM) for "cpu" or without a usable GPU."""
        snap = self.snapshot
        if snap is None:
            return "cpu", None
        ok = [g for g in snap.gpus if g.state == "ok"] if snap.has_gpu else []
        if ok and device != "cpu":
            if device.startswith("cuda"):
                suffix = device.partition(":")[2]
                index = int(suffix) if suffix.isdigit() else 0
                chosen = [g for g in ok if g.index == index]
                return "cuda", chosen[0].memory_free if chosen else None
            free = [g.memory_free for g in ok if g.memory_free is not None]
            return "cuda", sum(free) if len(free) == len(ok) else None
        return "cpu", snap.host.ram_available
