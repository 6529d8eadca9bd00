"""The models pane: the catalogue, what is on disk, predicted memory per mode, the load state and
download progress, rendered from the app's ModelController (the pane holds no load state).
Kept whole past 400 lines: one pane.

The figures and their wording come from figures.py; the fit verdict compares them with the
free memory of the latest monitor snapshot (see MonitorPane.free_for_model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Protocol, cast

from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from glmtui import catalog
from glmtui.config import Paths
from glmtui.engine.api import MODES
from glmtui.mirrors import EndpointInUse

from . import figures as fig
from .figures import VERDICT_STYLES, ModelRow, describe_job, prediction_notes
from .lists import SteadyOptionList
from .model_controller import ModelController
from .monitor import fmt_bytes

__all__ = ["ModelsPane", "ModelRow", "prediction_notes"]


class ModelsHost(Protocol):
    """What the pane asks of its app (never imported from app.py: no import circle)."""

    model: ModelController
    paths: Paths
    download_source: str

    def free_memory(self) -> tuple[str, Optional[int]]: ...
    def download_endpoint(self, source: str) -> EndpointInUse: ...
    def request_load(self, spec: str, mode: Optional[str] = None, label: Optional[str] = None) -> None: ...


class ModelList(SteadyOptionList):
    BINDINGS = [
        Binding("enter", "select", "Load", show=True),
        Binding("d", "app.download_model", "Download"),
        Binding("x", "app.cancel_download", "Cancel download"),
        Binding("s", "app.toggle_download_source", "Source"),
        Binding("e", "app.set_download_endpoint", "Endpoint", show=False),
        Binding("l", "app.toggle_engine_log", "Engine log", show=False),
    ]


LOG_LINES = 15  # the engine log's lines the pane shows


class ModelsPane(VerticalScroll):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: dict[str, ModelRow] = {}
        self.border_title = "Models"
        self.log_shown = False
        self._log_timer: Any = None
        self.confirm_load: Optional[tuple[str, str]] = None  # (row id, mode) refused once: Enter again loads

    describe_job = staticmethod(describe_job)

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
    def host(self) -> ModelsHost:
        return cast(ModelsHost, self.app)

    @property
    def model(self) -> ModelController:
        return self.host.model

    @property
    def option_list(self) -> ModelList:
        return self.query_one("#model-list", ModelList)

    # -------------------------------------------------------------- predictions

    def figures(self, row: Optional[ModelRow], device: str) -> fig.Figures:
        return fig.figures(self.model.exact, row, device)

    def quantization_row(self) -> Optional[ModelRow]:
        """The row F8 predicts for: the loaded model's, else the highlighted one."""
        loaded = self.model.loaded
        if loaded is not None and loaded.mode in MODES:
            folder = Path(loaded.model_path).resolve()
            for row in self.rows.values():
                if row.folder is not None and row.folder.resolve() == folder:
                    return row
        return self.highlighted_row()

    def mode_choices(self, current: str) -> tuple[list[tuple[str, Text]], str, dict[str, str]]:
        """The F8 dialog's (rows, note, refusals) for :meth:`quantization_row`, asked again as figures arrive."""
        row = self.quantization_row()
        device, free = self.host.free_memory()
        return fig.mode_choices(row, self.figures(row, device), current, device, free)

    def figures_arrived(self) -> None:
        """An exact count came back: show it here and in an open F8 dialog."""
        if not self.is_mounted:
            return
        self.refresh_info()
        from .modals import ModeModal

        for screen in self.app.screen_stack:
            if isinstance(screen, ModeModal):
                screen.refresh_figures()

    # -------------------------------------------------------------- rows

    def reload(self) -> None:
        models_dir = self.host.paths.models_dir
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
        extra += [Path(p) for p in self.model.extra_model_paths]
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
        # the local models' exact counts, one at a time in the background (a stored count starts nothing), asked
        # once the pane is on screen: at start their thread would share the first frame's CPU
        folders = [f for r in rows if r.status.state != "partial" and (f := fig.config_folder(r)) is not None]
        self.call_after_refresh(self.model.exact.background, folders, self.host.free_memory()[0])
        ol = self.option_list
        keep = ol.highlighted
        ol.clear_options()
        ol.add_options([Option(self._row_prompt(r), id=r.row_id) for r in rows])
        if rows:
            ol.highlighted = min(keep or 0, len(rows) - 1)
        self.refresh_info()

    def _row_prompt(self, row: ModelRow) -> Text:
        loaded = self.model.loaded
        is_loaded = (loaded is not None and loaded.mode in MODES and row.folder is not None
                     and Path(loaded.model_path).resolve() == row.folder.resolve())
        job = self.model.job_for(row.entry)
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
        model = self.model
        info = Text()
        loaded = model.loaded
        if model.load_stage is not None:
            info.append("Loading ", style="bold")
            info.append(model.loading_label or "model", style="bold")
            info.append(f" · {model.load_stage}")
        elif loaded is not None and loaded.mode not in MODES:
            info.append("Remote ", style="bold")
            info.append(loaded.model_name, style="bold green")
            info.append(f"\nserved by {loaded.model_path}")
        elif loaded is not None:
            info.append("Loaded ", style="bold")
            info.append(loaded.model_name, style="bold green")
            info.append(f"\n{loaded.mode} · {loaded.device} · {fmt_bytes(loaded.footprint_bytes)}"
                        f" · ctx {loaded.context_length}")
            info.append(f" · {loaded.load_seconds:.1f} s", style="dim")
            placement = getattr(loaded, "placement", "")
            if placement:  # where the layers went; an offload loudly (it is in the status bar too)
                info.append(f"\n{placement}", style="bold red" if getattr(loaded, "offloaded", ()) else "dim")
            for note in loaded.notes:
                if note != placement:
                    info.append(f"\n{note}", style="yellow")
            if getattr(model.engine, "log_path", None) is not None:
                info.append("\nits engine process's log: l under Models", style="dim")
            fig.append_comparison(info, model.exact, loaded)
        else:
            info.append("No model loaded", style="bold")
            if model.unloaded_note:
                info.append(f"\n{model.unloaded_note}", style="dim")
        if model.last_error:
            info.append("\n✗ ", style="bold red")
            info.append(model.last_error, style="red")
        if not model.endpoint:
            info.append(f"\nmode for the next load: {model.mode}", style="dim")
        self.query_one("#loaded-info", Static).update(info)
        bar = self.query_one("#load-bar", ProgressBar)
        bar.display = model.load_stage is not None
        if model.load_stage is not None:
            if model.load_fraction is None:
                bar.update(total=None)
            else:
                bar.update(total=100, progress=model.load_fraction * 100)
        self.refresh_detail()

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
            detail.append("not downloaded — d downloads" if e.hf_repo or e.modelscope_repo else "not found",
                          style="dim")
        if e.notes:
            detail.append(f"\n{e.notes}", style="dim italic")
        device, free = self.host.free_memory()
        figs = self.figures(row, device)
        verdicts = fig.verdicts(figs, device, free)
        where = "GPU" if device == "cuda" else "CPU"
        if figs.unknown:
            detail.append(f"\n✗ {figs.status}", style="yellow")
        elif figs.totals:
            free_text = (fmt_bytes(free) + (" free VRAM" if device == "cuda" else " available RAM")
                         if free is not None else "free memory unknown")
            label = f" {figs.label}" if figs.label else ""
            detail.append(f"\nPredicted on {where} ({free_text}){label}:", style="bold")
            if figs.status:
                detail.append(f"\n{figs.status}", style="dim")
            for mode in MODES:
                if mode not in figs.totals:
                    continue
                verdict = verdicts[mode]
                marker = "▶" if mode == self.model.mode else " "
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
            why = fig.refusal(mode, figs, device, free) if mode in figs.totals else "see above"
            detail.append(f"\n✗ {mode} would not fit: {why}", style="bold red")
            detail.append("\nEnter again loads it anyway", style="bold")
        job = self.model.job_for(row.entry)
        if job is not None:
            detail.append("\n")
            detail.append(describe_job(job), style="red" if job.state == "failed" else "cyan")
        if e.hf_repo or e.modelscope_repo:
            source = self.host.download_source
            if not (e.hf_repo if source == "hf" else e.modelscope_repo):  # only on the other hub
                source = "modelscope" if source == "hf" else "hf"
            endpoint = self.host.download_endpoint(source)  # a mirror shows here with who set it
            detail.append(f"\ndownloads from {endpoint.label} (s source · e endpoint)", style="dim")
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
        mode = self.model.mode
        device, free = self.host.free_memory()
        figs = self.figures(row, device)
        verdicts = fig.verdicts(figs, device, free)
        verdict = verdicts.get(mode)
        if verdict is not None and verdict.verdict == "won't fit" and self.confirm_load != (row.row_id, mode):
            self.confirm_load = (row.row_id, mode)  # refused: the reason, and Enter again to go ahead
            self.refresh_detail()
            self.app.notify(f"{row.entry.name} in {mode} would not fit: {fig.refusal(mode, figs, device, free)}. "
                            "Enter again loads it anyway; F8 picks another mode.", severity="warning", timeout=8)
            return
        self.confirm_load = None
        self.host.request_load(str(row.folder), label=row.entry.name)

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

        engine = self.model.engine
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

    # -------------------------------------------------------------- downloads

    def update_job(self, job: Any) -> None:
        """Show a download's progress (the controller keeps the jobs)."""
        bar = self.query_one("#download-bar", ProgressBar)
        running = [j for j in self.model.jobs.values() if not j.finished]
        bar.display = bool(running)
        if running:
            current = running[0]
            frac = current.progress.fraction if current.progress else 0.0
            bar.update(total=100, progress=frac * 100)
        if job.finished:
            self.reload()
        else:
            self.refresh_rows()
