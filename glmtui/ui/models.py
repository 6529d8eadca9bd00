"""The models pane: the catalogue, what is on disk, predicted memory per mode,
load / unload / quantization, and download progress.

Predictions: the exact figures (the model counted on the meta device,
engine/predict.py) come from a short-lived subprocess that a thread worker waits
for (``memory.predict_exact_subprocess``; torch never enters this process); until
they arrive, or when that count fails, the hand formula's figures are shown marked
"(estimate)". An architecture transformers does not know gets its message and no
figures. A model that is not on disk yet gets a rough estimate from the
catalogue's parameter count, and says so. The fit verdict compares the figures
with the free memory of the latest monitor snapshot (see MonitorPane.free_for_model).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import OptionList, ProgressBar, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from glmtui import catalog
from glmtui.engine import memory
from glmtui.engine.api import MODES

from .lists import SteadyOptionList
from .monitor import fmt_bytes, fmt_pair

if TYPE_CHECKING:  # pragma: no cover
    from .app import GlmApp

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
    """({mode: predicted bytes}, exact) from the hand formula (no subprocess; see ModelsPane.figures)."""
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


EXACT_GROUP = "exact-prediction"
# one predictor subprocess at a time: each imports torch and transformers (seconds of CPU)
_ONE_COUNT_AT_A_TIME = threading.Lock()


class ModelList(SteadyOptionList):
    BINDINGS = [
        Binding("enter", "select", "Load", show=True),
        Binding("d", "app.download_model", "Download"),
        Binding("x", "app.cancel_download", "Cancel download"),
        Binding("s", "app.toggle_download_source", "Source"),
        Binding("l", "app.toggle_engine_log", "Engine log", show=False),
    ]


LOG_LINES = 15  # the engine log's lines the pane shows


class ModelsPane(VerticalScroll):
    app: "GlmApp"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows: dict[str, ModelRow] = {}
        self.jobs: dict[str, object] = {}  # dest folder -> latest hub.DownloadJob
        self.load_stage: Optional[str] = None
        self.load_fraction: Optional[float] = None
        self.last_error: Optional[str] = None
        self.border_title = "Models"
        self.log_shown = False
        self._log_timer = None
        self.exact: dict[tuple[str, str], memory.ExactResult] = {}  # (folder, "cuda"/"cpu") -> exact count
        self._asked: set[tuple[str, str]] = set()  # exact counts asked for (running, queued or done)
        self.confirm_load: Optional[tuple[str, str]] = None  # (row id, mode) refused once: Enter again loads

    def compose(self) -> Iterable:
        yield Static(id="loaded-info")
        yield ProgressBar(total=100, show_eta=False, id="load-bar")
        yield ModelList(id="model-list")
        yield ProgressBar(total=100, show_eta=False, id="download-bar")
        yield Static(id="model-detail")
        yield Static(id="engine-log")

    def on_mount(self) -> None:
        self.query_one("#load-bar").display = False
        self.query_one("#download-bar").display = False
        self.query_one("#engine-log").display = False
        self.reload()

    @property
    def option_list(self) -> ModelList:
        return self.query_one("#model-list", ModelList)

    # -------------------------------------------------------------- predictions

    @staticmethod
    def config_folder(row: ModelRow) -> Optional[Path]:
        """The row's folder when it has a config.json to predict from."""
        folder = row.folder or row.entry.local_path
        if folder is not None and (Path(folder) / "config.json").is_file():
            return Path(folder)
        return None

    def exact_result(self, folder: str | Path, device: str) -> Optional[memory.ExactResult]:
        """The exact count for ``folder`` on ``device`` when it has arrived; else None, and it is asked for."""
        key = (str(Path(folder).resolve()), "cuda" if str(device).startswith("cuda") else "cpu")
        found = self.exact.get(key)
        if found is None and key not in self._asked:
            self._asked.add(key)
            self._count_exactly(key)
        return found

    @work(thread=True, exclusive=True, group=EXACT_GROUP, exit_on_error=False)
    def _count_exactly(self, key: tuple[str, str]) -> None:
        """The exact count in a subprocess (seconds on a first sight; the cache answers after)."""
        worker = get_current_worker()
        with _ONE_COUNT_AT_A_TIME:
            try:
                result = None if worker.is_cancelled else memory.predict_exact_subprocess(key[0], key[1])
            except Exception as exc:  # noqa: BLE001 - it should not raise; if it does, the estimate stays
                result = memory.ExactResult({}, f"exact count failed: {type(exc).__name__}: {exc}")
        try:
            self.app.call_from_thread(self._exact_arrived, key, result)
        except RuntimeError:  # the app has ended meanwhile
            pass

    def _exact_arrived(self, key: tuple[str, str], result: Optional[memory.ExactResult]) -> None:
        if result is None:  # a newer request cancelled it before it ran: asked again when next shown
            self._asked.discard(key)
            return
        self.exact[key] = result
        if not self.is_mounted:
            return
        self.refresh_info()
        from .modals import ModeModal

        for screen in self.app.screen_stack:
            if isinstance(screen, ModeModal):
                screen.refresh_figures()

    def figures_for(self, folder: str | Path, device: str) -> Figures:
        """Exact figures when counted; the formula's, labelled "(estimate)", until then or when the count failed."""
        result = self.exact_result(folder, device)
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

    def figures(self, row: Optional[ModelRow], device: str) -> Figures:
        if row is None:
            return Figures()
        folder = self.config_folder(row)
        if folder is not None:
            return self.figures_for(folder, device)
        totals = rough_totals(row, device)
        return Figures(totals, label="(rough estimate)" if totals else "")  # not on disk: from the parameter count

    @staticmethod
    def verdicts(figs: Figures, device: str, free: Optional[int]) -> dict[str, memory.FitVerdict]:
        """{mode: verdict} against ``free`` bytes (the monitor's last look: app.free_memory)."""
        return {m: memory.fit(t, free, device, mode=m) for m, t in figs.totals.items()}

    @staticmethod
    def refusal(mode: str, figs: Figures, device: str, free: Optional[int]) -> str:
        """Why ``mode`` would not fit, in the pane's units."""
        where = "free GPU memory" if device == "cuda" else "available RAM"
        total = figs.totals[mode]
        short = total - (free or 0)
        label = f" {figs.label}" if figs.label else ""
        return f"needs {fmt_bytes(total)}{label}, only {fmt_bytes(free)} {where} (short {fmt_bytes(short)})"

    def quantization_row(self) -> Optional[ModelRow]:
        """The row F8 predicts for: the loaded model's, else the highlighted one."""
        loaded = self.app.loaded
        if loaded is not None and loaded.mode in MODES:
            folder = Path(loaded.model_path).resolve()
            for row in self.rows.values():
                if row.folder is not None and row.folder.resolve() == folder:
                    return row
        return self.highlighted_row()

    def mode_choices(self, current: str) -> tuple[list[tuple[str, Text]], str, dict[str, str]]:
        """The F8 dialog's (rows, note, refusals) for :meth:`quantization_row`, asked again as figures arrive."""
        row = self.quantization_row()
        device, free = self.app.free_memory()
        figs = self.figures(row, device)
        verdicts = self.verdicts(figs, device, free)
        rows, refusals = [], {}
        for mode in MODES:
            prompt = Text(f"{'▶' if mode == current else ' '} {mode:<5}")
            if mode in figs.totals:
                verdict = verdicts[mode]
                prompt.append(f" {fmt_bytes(figs.totals[mode]):>10}  ")
                prompt.append(verdict.verdict, style=VERDICT_STYLES.get(verdict.verdict, ""))
                if mode in figs.details:
                    prompt.append(f"  weights {fmt_bytes(figs.details[mode].weight_bytes)}", style="dim")
                if verdict.verdict == "won't fit":
                    refusals[mode] = self.refusal(mode, figs, device, free)
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

    # -------------------------------------------------------------- rows

    def reload(self) -> None:
        models_dir = self.app.paths.models_dir
        rows: list[ModelRow] = []
        known_dirs: set[Path] = set()
        for entry in catalog.entries():
            try:
                status = catalog.local_status(entry, models_dir)
            except OSError:
                status = catalog.LocalStatus("absent", None)
            rows.append(ModelRow(f"cat:{entry.key}", entry, status))
            known_dirs.add(entry.model_dir(models_dir).resolve())
        extra: list[Path] = []
        try:
            extra += sorted(p for p in Path(models_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            pass
        extra += [Path(p) for p in self.app.extra_model_paths]
        for folder in extra:
            try:
                resolved = folder.expanduser().resolve()
            except OSError:
                continue
            if resolved in known_dirs or not resolved.is_dir():
                continue
            known_dirs.add(resolved)
            try:
                entry = catalog.entry_for_folder(resolved)
                status = catalog.local_status(entry, models_dir)
            except Exception:  # noqa: BLE001 - an unreadable folder is just not listed
                continue
            rows.append(ModelRow(f"dir:{resolved}", entry, status))
        self.rows = {r.row_id: r for r in rows}
        ol = self.option_list
        keep = ol.highlighted
        ol.clear_options()
        ol.add_options([Option(self._row_prompt(r), id=r.row_id) for r in rows])
        if rows:
            ol.highlighted = min(keep or 0, len(rows) - 1)
        self.refresh_info()

    def _job_for(self, row: ModelRow):
        try:
            dest = str(row.entry.model_dir(self.app.paths.models_dir))
        except ValueError:
            return None
        return self.jobs.get(dest)

    def _row_prompt(self, row: ModelRow) -> Text:
        loaded = self.app.loaded
        is_loaded = (loaded is not None and loaded.mode in MODES and row.folder is not None
                     and Path(loaded.model_path).resolve() == row.folder.resolve())
        job = self._job_for(row)
        state = row.status.state
        if is_loaded:
            mark, style = "● ", "bold green"
        elif job is not None and not job.finished:
            mark, style = "↓ ", "bold cyan"
        else:
            mark, style = {"complete": ("✓ ", "green"), "partial": ("◐ ", "yellow")}.get(state, ("  ", "dim"))
        text = Text(mark, style=style)
        text.append(row.entry.name[:24].ljust(24), style="bold" if state == "complete" else "")
        if job is not None and not job.finished:
            frac = job.progress.fraction if job.progress else 0.0
            text.append(f" {job.state} {frac * 100:3.0f}%", style="cyan")
        elif row.status.present:
            text.append(f" {fmt_bytes(row.status.size_bytes):>9}", style="dim")
            if state == "partial":
                text.append(" partial", style="yellow")
        elif row.entry.download_bytes:
            text.append(f" {fmt_bytes(row.entry.download_bytes):>9}", style="dim")
        return text

    def refresh_rows(self) -> None:
        ol = self.option_list
        for row_id, row in self.rows.items():
            try:
                ol.replace_option_prompt(row_id, self._row_prompt(row))
            except Exception:  # noqa: BLE001 - the list was rebuilt meanwhile
                pass
        self.refresh_detail()

    def highlighted_row(self) -> Optional[ModelRow]:
        ol = self.option_list
        if ol.highlighted is None or ol.option_count == 0:
            return None
        option = ol.get_option_at_index(ol.highlighted)
        return self.rows.get(option.id or "")

    # -------------------------------------------------------------- info + detail

    def refresh_info(self) -> None:
        app = self.app
        info = Text()
        loaded = app.loaded
        if self.load_stage is not None:
            info.append("Loading ", style="bold")
            info.append(app.loading_label or "model", style="bold")
            info.append(f" · {self.load_stage}")
        elif loaded is not None and loaded.mode not in MODES:
            info.append("Remote ", style="bold")
            info.append(loaded.model_name, style="bold green")
            info.append(f"\nserved by {loaded.model_path}")
        elif loaded is not None:
            info.append("Loaded ", style="bold")
            info.append(loaded.model_name, style="bold green")
            info.append(f"\n{loaded.mode} · {loaded.device} · {fmt_bytes(loaded.footprint_bytes)} · ctx {loaded.context_length}")
            info.append(f" · {loaded.load_seconds:.1f} s", style="dim")
            placement = getattr(loaded, "placement", "")
            if placement:  # where the layers went; an offload loudly (it is in the status bar too)
                info.append(f"\n{placement}", style="bold red" if getattr(loaded, "offloaded", ()) else "dim")
            for note in loaded.notes:
                if note != placement:
                    info.append(f"\n{note}", style="yellow")
            if getattr(app.engine, "log_path", None) is not None:
                info.append("\nits engine process's log: l under Models", style="dim")
            self._append_comparison(info, loaded)
        else:
            info.append("No model loaded", style="bold")
            if app.unloaded_note:
                info.append(f"\n{app.unloaded_note}", style="dim")
        if self.last_error:
            info.append("\n✗ ", style="bold red")
            info.append(self.last_error, style="red")
        if not app.endpoint:
            info.append(f"\nmode for the next load: {app.mode}", style="dim")
        self.query_one("#loaded-info", Static).update(info)
        bar = self.query_one("#load-bar", ProgressBar)
        bar.display = self.load_stage is not None
        if self.load_stage is not None:
            if self.load_fraction is None:
                bar.update(total=None)
            else:
                bar.update(total=100, progress=self.load_fraction * 100)
        self.refresh_detail()

    def loaded_prediction(self, loaded) -> tuple[Optional[memory.MemoryPrediction], str]:
        """(the prediction for what is loaded: its folder, mode and device; its label: "" when exact)."""
        try:
            figs = self.figures_for(loaded.model_path, "cuda" if str(loaded.device).startswith("cuda") else "cpu")
        except OSError:  # the folder has gone: nothing to compare with
            return None, ""
        return figs.details.get(loaded.mode), figs.label

    def _append_comparison(self, info: Text, loaded) -> None:
        """Predicted (weights / KV cache / overhead) next to what the load measured."""
        pred, label = self.loaded_prediction(loaded)
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

    def refresh_detail(self) -> None:
        row = self.highlighted_row()
        detail = Text()
        if row is None:
            self.query_one("#model-detail", Static).update(detail)
            return
        e = row.entry
        detail.append(e.name, style="bold")
        facts = []
        if e.params_b:
            facts.append(f"{e.params_b:g} B params")
        if e.context_length:
            facts.append(f"ctx {e.context_length}")
        if facts:
            detail.append("  " + " · ".join(facts), style="dim")
        if e.hf_repo:
            detail.append(f"\n{e.hf_repo}", style="dim")
        state = row.status.state
        detail.append("\n")
        if state == "complete":
            detail.append("on disk" + (" (verified)" if row.status.verified else ""), style="green")
        elif state == "partial":
            detail.append("partly downloaded — d resumes", style="yellow")
        else:
            detail.append("not downloaded — d downloads" if e.hf_repo or e.modelscope_repo else "not found", style="dim")
        if e.notes:
            detail.append(f"\n{e.notes}", style="dim italic")
        device, free = self.app.free_memory()
        figs = self.figures(row, device)
        verdicts = self.verdicts(figs, device, free)
        where = "GPU" if device == "cuda" else "CPU"
        if figs.unknown:
            detail.append(f"\n✗ {figs.status}", style="yellow")
        elif figs.totals:
            free_text = fmt_bytes(free) + (" free VRAM" if device == "cuda" else " available RAM") if free is not None else "free memory unknown"
            detail.append(f"\nPredicted on {where} ({free_text})" + (f" {figs.label}" if figs.label else "") + ":", style="bold")
            if figs.status:
                detail.append(f"\n{figs.status}", style="dim")
            for mode in MODES:
                if mode not in figs.totals:
                    continue
                verdict = verdicts[mode]
                marker = "▶" if mode == self.app.mode else " "
                detail.append(f"\n {marker}{mode:<5}{fmt_bytes(figs.totals[mode]):>10}  ")
                detail.append(verdict.verdict, style=VERDICT_STYLES.get(verdict.verdict, ""))
                if mode in figs.details:
                    detail.append(f"  weights {fmt_bytes(figs.details[mode].weight_bytes)}", style="dim")
            for note in prediction_notes(figs.details):
                detail.append(f"\n{note}", style="dim")
        elif figs.status:
            detail.append(f"\n{figs.status}", style="yellow")
        if self.confirm_load is not None and self.confirm_load[0] == row.row_id:
            mode = self.confirm_load[1]
            detail.append(f"\n✗ {mode} would not fit: " + (self.refusal(mode, figs, device, free) if mode in figs.totals else
                                                            "see above"), style="bold red")
            detail.append("\nEnter again loads it anyway", style="bold")
        job = self._job_for(row)
        if job is not None:
            detail.append("\n")
            detail.append(self.describe_job(job), style="red" if job.state == "failed" else "cyan")
        if e.hf_repo or e.modelscope_repo:
            source = self.app.download_source
            if not (e.hf_repo if source == "hf" else e.modelscope_repo):  # only on the other hub
                source = "modelscope" if source == "hf" else "hf"
            source = {"hf": "Hugging Face", "modelscope": "ModelScope"}.get(source, source)
            detail.append(f"\ndownloads from {source} (s switches)", style="dim")
            detail.append("\nEnter load · d download · x cancel · F8 mode", style="dim")
        else:  # a folder of the user's: nothing to download
            detail.append(f"\nlocal folder {row.folder or e.local_path}", style="dim")
            detail.append("\nEnter load · F8 mode", style="dim")
        self.query_one("#model-detail", Static).update(detail)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        self.confirm_load = None
        self.refresh_detail()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        row = self.rows.get(event.option.id or "")
        if row is None:
            return
        if row.folder is None or row.status.state != "complete":
            if row.status.state == "partial":
                self.app.notify(f"{row.entry.name} is only partly downloaded: press d to resume.", severity="warning")
            else:
                self.app.notify(f"{row.entry.name} is not downloaded yet: press d to download it.", severity="warning")
            return
        mode = self.app.mode
        device, free = self.app.free_memory()
        figs = self.figures(row, device)
        verdicts = self.verdicts(figs, device, free)
        verdict = verdicts.get(mode)
        if verdict is not None and verdict.verdict == "won't fit" and self.confirm_load != (row.row_id, mode):
            self.confirm_load = (row.row_id, mode)  # refused: the reason, and Enter again to go ahead
            self.refresh_detail()
            self.app.notify(f"{row.entry.name} in {mode} would not fit: {self.refusal(mode, figs, device, free)}. "
                            "Enter again loads it anyway; F8 picks another mode.", severity="warning", timeout=8)
            return
        self.confirm_load = None
        self.app.request_load(str(row.folder), label=row.entry.name)

    # -------------------------------------------------------------- the engine's log

    def toggle_engine_log(self, shown: Optional[bool] = None) -> None:
        """Show (or hide) the last lines of the engine process's log, re-read every second while shown."""
        self.log_shown = not self.log_shown if shown is None else shown
        box = self.query_one("#engine-log", Static)
        box.display = self.log_shown
        if self._log_timer is not None:
            self._log_timer.stop()
            self._log_timer = None
        if self.log_shown:
            self.refresh_engine_log()
            self._log_timer = self.set_interval(1.0, self.refresh_engine_log)
            self.call_after_refresh(box.scroll_visible, animate=False)

    def engine_log_text(self) -> Text:
        from glmtui.engine.process import log_tail  # no torch: the front end's side of the engine

        engine = self.app.engine
        path = getattr(engine, "log_path", None)
        exited = getattr(engine, "last_exit", None)
        if exited is not None and exited.log_path and getattr(engine, "pid", None) is None:
            path = exited.log_path  # nothing loaded since it ended: the log that says why
        text = Text("Engine log", style="bold")
        if path is None:
            has_log = hasattr(engine, "log_path")
            text.append(" (l hides)\n", style="dim")
            text.append("no engine process has started yet" if has_log else
                        "the model does not run in an engine process of glmtui's: no log", style="dim")
            return text
        text.append(f" {path} (l hides)", style="dim")
        tail = log_tail(Path(path), LOG_LINES)
        text.append("\n" + (tail or "(empty)"))
        return text

    def refresh_engine_log(self) -> None:
        if self.log_shown:
            self.query_one("#engine-log", Static).update(self.engine_log_text())

    # -------------------------------------------------------------- progress

    def set_load_progress(self, stage: Optional[str], fraction: Optional[float]) -> None:
        self.load_stage = stage
        self.load_fraction = fraction
        self.refresh_info()

    @staticmethod
    def describe_job(job) -> str:
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

    def update_job(self, job) -> None:
        self.jobs[str(job.dest)] = job
        bar = self.query_one("#download-bar", ProgressBar)
        running = [j for j in self.jobs.values() if not j.finished]
        bar.display = bool(running)
        if running:
            current = running[0]
            frac = current.progress.fraction if current.progress else 0.0
            bar.update(total=100, progress=frac * 100)
        if job.finished:
            self.reload()
        else:
            self.refresh_rows()
