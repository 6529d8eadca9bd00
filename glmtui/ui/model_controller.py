"""ModelController: which model is loaded or loading and everything that changes it, without widgets.
Kept whole past 400 lines: one controller and the messages it sends.

It holds the load state (loaded, the stage and fraction of a load, the last error, the note after
an unload), asks the engine to load and unload, keeps the download queue and its jobs, and the
memory figures an unload is compared with. It never touches Textual: what changes goes out
through ``emit`` (one of the dataclasses below), which the app turns into a Textual message and
routes to the panes; a toast goes through ``tell`` at once. ``emit`` must be safe to call from any
thread (downloads and exact counts report on theirs); every other method, and ``tell``, runs on
the UI thread unless it says otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Optional

from glmtui import catalog
from glmtui.config import Paths
from glmtui.engine.api import MODES
from glmtui.engine.events import EngineExited, EngineUnresponsive, Failed, Loaded, LoadProgress, Unloaded
from glmtui.mirrors import other_source_hint
from glmtui.resolve import resolve_model

from .exact_counts import ExactCounts
from .hang_watch import HangWatch
from .monitor import fmt_bytes, process_rss
from .unload_note import unload_memory_note


@dataclass(frozen=True)
class StateChanged:
    """The load state changed: panes re-read it (``rows``: the Models list is rebuilt, a new folder shows)."""

    rows: bool = False
    progress_only: bool = False  # a load's stage or fraction only


Severity = Literal["information", "warning", "error"]


@dataclass(frozen=True)
class Note:
    """Something to tell the user (a toast)."""

    message: str
    severity: Severity = "information"
    title: str = ""
    timeout: Optional[float] = None


@dataclass(frozen=True)
class BaseModelLoaded:
    """A base model was loaded: it continues text (completion mode), it was never taught the chat roles."""


@dataclass(frozen=True)
class DownloadChanged:
    job: Any


@dataclass(frozen=True)
class FiguresArrived:
    """An exact memory count arrived: the pane and an open F8 dialog show it."""


@dataclass
class EngineNoticeState:
    """The engine needs the user: it ended ("exited") or does not answer ("unresponsive")."""

    kind: str
    message: str
    again: str = ""
    log_path: Optional[str] = None
    seconds: float = 0.0


def make_engine(endpoint: Optional[str], engine_kind: str, local: str,
                problems: list[tuple[Severity, str]]) -> tuple[Any, Optional[str]]:
    """(the engine, the endpoint still in use): RemoteEngine for an endpoint, else the local choice.

    ``local`` is "process" (an EngineProcess: torch never enters the TUI's process) or "thread"
    (the in-process worker, for tests); an endpoint that cannot be used is said in ``problems``."""
    if endpoint:
        try:
            from glmtui.engine.remote import RemoteEngine

            return RemoteEngine(endpoint), endpoint
        except Exception as exc:  # noqa: BLE001 - say why, run locally instead
            problems.append(("error", f"Cannot use the endpoint {endpoint} ({exc}); running models locally."))
    from glmtui.engine.choose import SwitchingEngine

    # glmtui's own engine or the managed vLLM server (--engine); the load dialog switches between them
    return SwitchingEngine(engine_kind, in_process=local == "thread"), None


class ModelController:
    UNLOAD_SETTLE = 1.5  # seconds after an unload before memory is compared with the figure from before the load

    def __init__(self, engine: Any, *, paths: Paths, mode: str, device: str = "auto",
                 endpoint: Optional[str] = None, emit: Callable[[object], object],
                 tell: Callable[[Note], object] = lambda note: None,
                 save_mode: Callable[[str], None] = lambda mode: None,
                 latest_snapshot: Callable[[], Any] = lambda: None, last_spec: str = "") -> None:
        self.engine = engine
        self.paths = paths
        self.mode = mode  # for the next load
        self.device = device
        self.endpoint = endpoint
        self._emit = emit
        self._tell = tell  # a toast, shown at once (every Note is told on the UI thread)
        self._save_mode = save_mode  # remembered in the prefs after a load and on F8
        self.loaded: Optional[Loaded] = None
        self.loading_label: Optional[str] = None
        self.load_stage: Optional[str] = None  # None: no load running
        self.load_fraction: Optional[float] = None
        self.last_error: Optional[str] = None
        self.unloaded_note: Optional[str] = None
        self.notice: Optional[EngineNoticeState] = None
        self.last_spec = last_spec
        self.last_load: Optional[tuple[str, str, str]] = None  # (folder, mode, label) of the last local load
        self.extra_model_paths: list[str] = []
        self.jobs: dict[str, Any] = {}  # dest folder -> latest hub.DownloadJob
        self._job_entries: dict[int, catalog.CatalogEntry] = {}  # job id -> its entry (the failure's hint)
        self._downloads: Any = None
        # counts nobody waits for run while no load does (a load's imports and a count's compete for the CPU)
        self.exact = ExactCounts(lambda: emit(FiguresArrived()), idle=lambda: self.load_stage is None)
        self._latest_snapshot = latest_snapshot  # the monitor's latest, or None
        self._memory_before_load: tuple[str, Optional[int]] = ("", None)
        self._awaiting_import_baseline = False
        self._rss_after_imports: Optional[int] = None
        self._unload_check_at: Optional[float] = None
        self.hang = HangWatch()  # a reply silent while the engine's device idles: a hang the ping misses

    # ------------------------------------------------------------------ loading

    def set_stage(self, stage: Optional[str], fraction: Optional[float] = None) -> None:
        self.load_stage, self.load_fraction = stage, fraction
        self._emit(StateChanged(progress_only=True))

    def request_load(self, spec: str, mode: Optional[str] = None, label: Optional[str] = None) -> None:
        """Load what the user typed (a folder, a catalogue name; with an endpoint, a served model id)."""
        mode = mode or self.mode
        if self.endpoint:  # the server has its model: load() (re)connects, naming a served model id or none
            self.loading_label = spec or self.endpoint
            self.last_error = None
            self.set_stage("connecting")
            self.engine.load(spec)
            return
        found = resolve_model(spec, self.paths.models_dir,
                              "highlight it under Models (F2) and press d, or run `glmtui pull {key}`")
        if found.problem is not None or found.folder is None:
            self.last_error = found.problem
            self._emit(StateChanged())
            self._tell(Note(found.problem or "nothing to load", "error", "Could not load the model", 15))
            return
        self.last_spec = spec
        self.last_load = (found.folder, mode, label or found.name)
        if self.notice is not None and self.notice.kind == "exited":  # a new process is on its way
            self.notice = None
        self.mode = mode
        if self.loaded is None:  # switching quantization keeps the figure from before the first load
            self._memory_before_load = self.own_memory()
            self._rss_after_imports = None
            # the imports stay only when the model runs in this process (an engine process takes them along)
            self._awaiting_import_baseline = self.engine_in_this_process()
        self.loading_label = label or found.name
        self.last_error = None
        self.set_stage("queued")
        try:
            self.engine.load(found.folder, mode, self.device)
        except Exception as exc:  # noqa: BLE001 - a remote engine may refuse at once
            self.set_stage(None)
            self._tell(Note(f"{type(exc).__name__}: {exc}", "error", "Could not load the model"))

    def reload(self) -> None:
        """The last local load again (after the engine process ended)."""
        if self.last_load is None:
            self._tell(Note("No model was loaded yet: Ctrl+L loads one.", "warning"))
            return
        folder, mode, label = self.last_load
        self.request_load(folder, mode, label=label)

    def unload(self) -> None:
        if self.loaded is None:
            self._tell(Note("No model is loaded.", "warning"))
            return
        self.engine.unload()

    def choose_mode(self, mode: str) -> None:
        """F8: reload the loaded model in ``mode``, or use it for the next load."""
        if self.loaded is not None and mode != self.loaded.mode:
            self.request_load(self.loaded.model_path, mode, label=self.loaded.model_name)
            return
        self.mode = mode
        self._save_mode(mode)
        self._emit(StateChanged())
        self._tell(Note(f"The next load uses {mode}.", timeout=3))

    def kill_engine(self) -> None:
        kill = getattr(self.engine, "kill", None)
        if kill is None or not kill("stopped from glmtui (F7)"):
            self._tell(Note("No engine process to kill.", "warning"))

    @property
    def can_reload(self) -> bool:
        """Nothing loaded or loading, and something to load again."""
        return self.last_load is not None and self.loaded is None and self.load_stage is None

    # ------------------------------------------------------------------ engine events

    def engine_thread_event(self, event: Any) -> None:
        """Called on the engine's thread for every event (never blocks)."""
        self.hang.event(event)
        if isinstance(event, LoadProgress) and self._awaiting_import_baseline:
            # the engine's first report of a load comes after its imports, before the model is built:
            # the unload note compares with this figure, not with one from before torch was imported
            self._awaiting_import_baseline = False
            self._rss_after_imports = process_rss()

    def handle(self, event: Any) -> bool:
        """An engine event about the model (on the UI thread); False for a generation's, left to the chat."""
        if isinstance(event, LoadProgress):
            self.set_stage(event.stage, event.fraction)
        elif isinstance(event, Loaded):
            self._loaded(event)
        elif isinstance(event, Unloaded):
            self.loaded = None
            after = (f"; {fmt_bytes(event.device_bytes_after)} still reserved on the device"
                     if event.device_bytes_after else "")
            self.unloaded_note = f"unloaded {event.model_name}{after}"
            self._tell(Note(f"Unloaded {event.model_name or 'the model'}{after}."))
            self._unload_check_at = time.monotonic() + self.UNLOAD_SETTLE  # compare once memory has settled
            self._emit(StateChanged())
        elif isinstance(event, EngineExited):
            self._exited(event)
        elif isinstance(event, EngineUnresponsive):
            if event.seconds > 0:
                self.notice = EngineNoticeState("unresponsive", event.message, seconds=event.seconds)
            elif self.notice is not None and self.notice.kind == "unresponsive":  # it answers again
                self.notice = None
            else:
                return True
            self._emit(StateChanged(progress_only=True))
        elif isinstance(event, Failed) and event.during == "load":
            self.loaded = None if getattr(self.engine, "model_info", None) is None else self.loaded
            self.loading_label = None
            self.last_error = event.message
            self.load_stage = self.load_fraction = None
            self._tell(Note(event.message, "error", "Could not load the model", 15))
            self._emit(StateChanged())
        elif isinstance(event, Failed) and event.during == "unload":
            self._tell(Note(event.message, "error", "Could not unload"))
        else:
            return False
        return True

    def _loaded(self, event: Loaded) -> None:
        self.loaded = event
        self.loading_label = None
        self.unloaded_note = None
        self.notice = None
        self.last_error = None
        self.load_stage = self.load_fraction = None
        if event.mode in MODES:  # a local load (a remote engine reports mode "remote")
            if event.model_path not in self.extra_model_paths:
                self.extra_model_paths.append(event.model_path)
            self.mode = event.mode
            self._save_mode(event.mode)
            self._tell(Note(
                f"{event.model_name} · {event.mode} · {event.device} · {fmt_bytes(event.footprint_bytes)} "
                f"in {event.load_seconds:.1f} s" + "".join(f"\n{note}" for note in event.notes),
                title="Model loaded", timeout=8 if event.notes else 4))
        else:
            self._tell(Note(f"{event.model_name} served by {event.model_path}", title="Connected", timeout=4))
        self._emit(StateChanged(rows=True))
        if event.mode in MODES and catalog.entry_for_folder(event.model_path).kind == "base":
            self._emit(BaseModelLoaded())

    def _exited(self, event: EngineExited) -> None:
        """The engine process ended unasked (its requests have ended already): say why, offer a reload."""
        self.loaded = None
        self.loading_label = None
        self.load_stage = self.load_fraction = None
        again = (f"F6 loads {self.last_load[2]} ({self.last_load[1]}) again"
                 if self.last_load is not None else "Ctrl+L loads a model")
        self.notice = EngineNoticeState("exited", event.message, again, event.log_path)
        self._tell(Note(f"{event.message}\n{again}.", "error", "The engine process ended", 10))
        self._emit(StateChanged())

    # ------------------------------------------------------------------ memory

    def monitor_sample(self, snapshot: Any) -> None:
        """The monitor took ``snapshot``: a hang it shows (see HangWatch); once memory settled after an unload,
        the note comparing it."""
        hang = self.hang.check(snapshot, self.loaded.device if self.loaded is not None else "")
        if hang is not None:  # shown and cleared as the ping's EngineUnresponsive is
            self.handle(EngineUnresponsive(0, *hang))
        if self._unload_check_at is None or time.monotonic() < self._unload_check_at or self.loaded is not None:
            return
        self._unload_check_at = None
        kind, before = self._memory_before_load
        now_kind, after = self.own_memory()
        reserved = sum(t.reserved for t in (snapshot.torch or ())) if snapshot is not None else None
        imports = self._rss_after_imports if kind == "RAM" else None
        note = unload_memory_note(kind, before, after, reserved, imports) if kind == now_kind else None
        if note:
            self.unloaded_note = note
            self._emit(StateChanged(progress_only=True))
            self._tell(Note(note, title="Memory after unload", timeout=8))

    def own_memory(self) -> tuple[str, Optional[int]]:
        """glmtui's memory (this process and its engine processes) as the monitor last saw it: on the GPUs,
        else resident RAM."""
        snap = self._latest_snapshot()
        if snap is None:
            return ("", None)
        if snap.has_gpu:
            used = [g.self_used_bytes for g in snap.gpus if g.self_used_bytes is not None]
            if used:
                return ("GPU", sum(used))
        return ("RAM", snap.host.process_rss)

    def engine_pids(self) -> tuple[int, ...]:
        """The engine's processes now (the monitor's thread asks; this process's own pid left out)."""
        try:
            return tuple(p for p in self.engine.memory_report().pids if p != os.getpid())
        except Exception:  # noqa: BLE001 - no pids: nothing to show
            return ()

    def engine_in_this_process(self) -> bool:
        try:
            return os.getpid() in self.engine.memory_report().pids
        except Exception:  # noqa: BLE001 - a report is no reason to fail a load
            return False

    # ------------------------------------------------------------------ downloads

    def download(self, entry: catalog.CatalogEntry, source: str) -> None:
        """Queue ``entry``'s download from ``source`` ("hf" / "modelscope"; the other hub if only there)."""
        if not (entry.hf_repo if source == "hf" else entry.modelscope_repo):
            source = "modelscope" if source == "hf" else "hf"
        try:
            if self._downloads is None:
                from glmtui import hub

                self._downloads = hub.DownloadQueue(
                    hub.Downloader(self.paths.models_dir, config_file=self.paths.config_file),
                    on_update=self._job_changed,
                )
            job = self._downloads.submit(entry, source=source)
        except Exception as exc:  # noqa: BLE001 - one line, the app keeps running
            self._tell(Note(f"{type(exc).__name__}: {exc}", "error", "Download"))
            return
        self._job_entries[job.id] = entry
        self._tell(Note(f"Downloading {entry.name} into {job.dest}", timeout=5))

    def _job_changed(self, job: Any) -> None:  # on the download queue's thread
        if job.state == "done":  # counted now, in the background: its figures are then at hand
            self.exact.background([job.path or job.dest], self.count_device(), first=True)
        self._emit(DownloadChanged(job))

    def count_device(self) -> str:
        """The device the figures are for: "cuda" once the monitor has seen a GPU, else "cpu"."""
        snap = self._latest_snapshot()
        return "cuda" if snap is not None and getattr(snap, "has_gpu", False) else "cpu"

    def job_for(self, entry: catalog.CatalogEntry) -> Any:
        try:
            return self.jobs.get(str(entry.model_dir(self.paths.models_dir)))
        except ValueError:
            return None

    def cancel_download(self, entry: Optional[catalog.CatalogEntry]) -> None:
        job = self.job_for(entry) if entry is not None else None
        if job is None or job.finished or self._downloads is None:
            self._tell(Note("No download running for the highlighted model.", "warning"))
            return
        self._downloads.cancel(job.id)

    def job_updated(self, job: Any) -> None:
        """A download's new state (on the UI thread, from the DownloadChanged the queue's thread emitted)."""
        entry = self._job_entries.get(job.id)
        if job.state == "failed" and entry is not None:  # where the other hub may work, say so
            job = replace(job, error=(job.error or "download failed")
                          + other_source_hint(entry, job.source, job.error_type, ui=True))
        self.jobs[str(job.dest)] = job
        if job.state == "done":
            self._tell(Note(f"{job.label} downloaded to {job.path or job.dest}", title="Download complete"))
        elif job.state == "failed":
            self._tell(Note(job.error or "download failed", "error", f"Download of {job.label} failed"))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Quitting: downloads cancelled, a running exact count ended, the engine shut down."""
        self.exact.close()
        if self._downloads is not None:
            try:
                self._downloads.close(cancel=True, timeout=2.0)
            except Exception:  # noqa: BLE001 - closing: best effort
                pass
        try:
            self.engine.shutdown(timeout=5.0)
        except Exception:  # noqa: BLE001 - closing: best effort
            pass
