"""What the Models pane and the F8 dialog say about memory: predicted figures per mode, fit verdicts, notes.

Exact figures (the model counted on the meta device, from ExactCounts) when they have
arrived; until then, or when that count fails, the hand formula's figures marked
"(estimate)". An architecture transformers does not know gets its message and no figures.
A model not on disk yet gets a rough estimate from the catalogue's parameter count.
No widgets here: the pane renders what these return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rich.text import Text

from glmtui import catalog
from glmtui.engine import memory
from glmtui.engine.api import MODES

from .exact_counts import ExactCounts
from .monitor import fmt_bytes, fmt_pair

VERDICT_STYLES = {"fits": "green", "tight": "yellow", "won't fit": "red", "CPU only": "cyan", "unknown": "dim"}


@dataclass
class ModelRow:
    row_id: str
    entry: catalog.CatalogEntry
    status: catalog.LocalStatus

    @property
    def folder(self) -> Optional[Path]:
        return self.status.path if self.status.present else None


def detailed_predictions(row: ModelRow, device: str) -> dict[str, memory.MemoryPrediction]:
    """{mode: prediction} from the row's config.json; empty when it has none on disk."""
    folder = row.folder or row.entry.local_path
    if folder is not None and (Path(folder) / "config.json").is_file():
        try:
            return memory.predict_for_dir(folder, device=device)
        except Exception:  # noqa: BLE001 - an odd config.json: the caller falls back to the estimate
            pass
    return {}


def context_note(pred: memory.MemoryPrediction) -> str:
    """Which context a prediction's KV cache assumes, against the model's own."""
    if pred.model_context and pred.model_context > pred.context_len:
        return (f"KV cache at {pred.context_len:,} tokens of context; the model's whole "
                f"{pred.model_context:,} would take {fmt_bytes(pred.kv_bytes_at(pred.model_context))}")
    if pred.model_context == pred.context_len:
        return f"KV cache at the model's whole context, {pred.context_len:,} tokens"
    return f"KV cache at {pred.context_len:,} tokens of context"


def prediction_notes(preds: dict[str, memory.MemoryPrediction]) -> list[str]:
    """What the figures assume, in words: the context, and fixed costs where they outweigh the weights."""
    if not preds:
        return []
    notes = [context_note(next(iter(preds.values())))]
    if any(p.fixed_dominate for p in preds.values()):
        fp32 = preds.get("fp32")
        larger = [m for m in ("int8", "int4") if fp32 is not None and m in preds
                  and preds[m].total_bytes > fp32.total_bytes]
        note = ("fixed costs outweigh this model's weights: activations, the KV cache and int8/int4 "
                "workspaces do not shrink with quantization")
        if larger:
            note += f", so {' and '.join(larger)} predict{'s' if len(larger) == 1 else ''} more than fp32"
        notes.append(note)
    return notes


def rough_totals(row: ModelRow, device: str) -> dict[str, int]:
    """{mode: bytes} from the catalogue's parameter count, for a model not on disk (rough)."""
    if not row.entry.params_b:
        return {}
    params = row.entry.params_b * 1e9
    per = {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0, "int8": 1.1, "int4": 0.6}
    extra = memory.CUDA_CONTEXT_BYTES if device == "cuda" else 0
    return {m: int(params * per[m] * 1.08) + extra for m in MODES}


def predictions(row: ModelRow, device: str) -> tuple[dict[str, int], bool]:
    """({mode: predicted bytes}, exact) from the hand formula (no subprocess; see figures())."""
    preds = detailed_predictions(row, device)
    if preds:
        return {m: p.total_bytes for m, p in preds.items()}, all(p.exact for p in preds.values())
    return rough_totals(row, device), False


@dataclass
class Figures:
    """What the pane and the F8 dialog show for one model on one device."""

    totals: dict[str, int] = field(default_factory=dict)  # {mode: predicted total bytes}
    details: dict[str, memory.MemoryPrediction] = field(default_factory=dict)
    exact: bool = False  # counted on the meta device (else an estimate, labelled)
    label: str = ""  # "" for exact figures, else "(estimate)" / "(rough estimate)"
    status: str = ""  # why they are estimates (counting…, the exact count failed), or the unknown architecture
    unknown: bool = False  # transformers does not know the architecture: no figures at all


def config_folder(row: ModelRow) -> Optional[Path]:
    """The row's folder when it has a config.json to predict from."""
    folder = row.folder or row.entry.local_path
    if folder is not None and (Path(folder) / "config.json").is_file():
        return Path(folder)
    return None


def figures_for(counts: ExactCounts, folder: str | Path, device: str) -> Figures:
    """Exact figures when counted; the formula's, labelled "(estimate)", until then or when the count failed."""
    result = counts.result(folder, device)
    if result is not None and result.predictions:
        preds = dict(result.predictions)
        return Figures({m: p.total_bytes for m, p in preds.items()}, preds, exact=True)
    if result is not None and result.unknown_architecture:
        return Figures(status=result.error or "unknown architecture: no prediction", unknown=True)
    status = "counting exactly…" if result is None else (result.error or "the exact count failed")
    try:
        preds = memory.predict_for_dir(folder, device=device)
    except Exception as exc:  # noqa: BLE001 - an odd config.json: nothing to show but why
        return Figures(status=f"{status}; no estimate either ({type(exc).__name__}: {exc})")
    return Figures({m: p.total_bytes for m, p in preds.items()}, preds, label="(estimate)", status=status)


def figures(counts: ExactCounts, row: Optional[ModelRow], device: str) -> Figures:
    if row is None:
        return Figures()
    folder = config_folder(row)
    if folder is not None:
        return figures_for(counts, folder, device)
    totals = rough_totals(row, device)
    return Figures(totals, label="(rough estimate)" if totals else "")  # not on disk: from the parameter count


def verdicts(figs: Figures, device: str, free: Optional[int]) -> dict[str, memory.FitVerdict]:
    """{mode: verdict} against ``free`` bytes (the monitor's last look: app.free_memory)."""
    return {m: memory.fit(t, free, device, mode=m) for m, t in figs.totals.items()}


def refusal(mode: str, figs: Figures, device: str, free: Optional[int]) -> str:
    """Why ``mode`` would not fit, in the pane's units."""
    where = "free GPU memory" if device == "cuda" else "available RAM"
    total = figs.totals[mode]
    short = total - (free or 0)
    label = f" {figs.label}" if figs.label else ""
    return f"needs {fmt_bytes(total)}{label}, only {fmt_bytes(free)} {where} (short {fmt_bytes(short)})"


def mode_choices(row: Optional[ModelRow], figs: Figures, current: str, device: str,
                 free: Optional[int]) -> tuple[list[tuple[str, Text]], str, dict[str, str]]:
    """The F8 dialog's (rows, note, refusals) for ``row``."""
    fits = verdicts(figs, device, free)
    rows, refusals = [], {}
    for mode in MODES:
        prompt = Text(f"{'▶' if mode == current else ' '} {mode:<5}")
        if mode in figs.totals:
            verdict = fits[mode]
            prompt.append(f" {fmt_bytes(figs.totals[mode]):>10}  ")
            prompt.append(verdict.verdict, style=VERDICT_STYLES.get(verdict.verdict, ""))
            if mode in figs.details:
                prompt.append(f"  weights {fmt_bytes(figs.details[mode].weight_bytes)}", style="dim")
            if verdict.verdict == "won't fit":
                refusals[mode] = refusal(mode, figs, device, free)
        rows.append((mode, prompt))
    lines = []
    if row is not None and figs.unknown:
        lines.append(f"{row.entry.name}: {figs.status}")
    elif row is not None and figs.totals:
        lines.append(f"predicted for {row.entry.name}" + (f" {figs.label}" if figs.label else ""))
    if figs.status and not figs.unknown:
        lines.append(figs.status)
    lines += prediction_notes(figs.details)
    return rows, "\n".join(lines), refusals


def loaded_prediction(counts: ExactCounts, loaded: Any) -> tuple[Optional[memory.MemoryPrediction], str]:
    """(the prediction for what is loaded: its folder, mode and device; its label: "" when exact)."""
    try:
        figs = figures_for(counts, loaded.model_path, "cuda" if str(loaded.device).startswith("cuda") else "cpu")
    except OSError:  # the folder has gone: nothing to compare with
        return None, ""
    return figs.details.get(loaded.mode), figs.label


def append_comparison(info: Text, counts: ExactCounts, loaded: Any) -> None:
    """Predicted (weights / KV cache / overhead) next to what the load measured."""
    pred, label = loaded_prediction(counts, loaded)
    if pred is None:
        return
    info.append(f"\npredicted {fmt_bytes(pred.total_bytes)} = {fmt_bytes(pred.weight_bytes)} weights"
                f" + {fmt_bytes(pred.kv_cache_bytes)} KV cache + {fmt_bytes(pred.overhead_bytes)} overhead")
    if label:
        info.append(f" {label}", style="yellow")
    ratio = loaded.footprint_bytes / pred.weight_bytes if pred.weight_bytes else None
    info.append(f"\nmeasured {fmt_bytes(loaded.footprint_bytes)} of weights")
    if ratio is not None:
        info.append(f" = {ratio:.2f}× predicted", style="bold")
    info.append("\n" + "\n".join(prediction_notes({pred.mode: pred})), style="dim")
    info.append("\nKV cache and overhead are taken while a reply is written (Monitor shows them)", style="dim")


def describe_job(job: Any) -> str:
    """A download job's state in one line."""
    if job.state == "failed":
        return f"download failed: {job.error}"
    if job.state == "cancelled":
        return "download cancelled (d resumes it)"
    if job.state == "done":
        return "download complete"
    p = job.progress
    if p is None:
        return f"download {job.state}"
    speed = f" · {fmt_bytes(p.speed_bps)}/s" if p.speed_bps else ""
    return f"{p.phase} {fmt_pair(p.bytes_done, p.bytes_total)} ({p.fraction * 100:.0f}%){speed}"
