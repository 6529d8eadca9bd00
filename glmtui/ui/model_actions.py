"""GlmApp's model side: the load / unload / quantization / download actions and where the
ModelController's changes go (toasts, the Models pane, the status line, the engine notice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from textual.app import ScreenStackError
from textual.css.query import NoMatches
from textual.message import Message

from glmtui.engine.api import MODES
from glmtui.engine.events import Loaded
from glmtui.mirrors import NAMES, EndpointInUse, endpoint_in_use

from . import prefs as prefs_file
from .app_base import AppBase
from .model_controller import BaseModelLoaded, DownloadChanged, FiguresArrived, Note, StateChanged
from .notice import EngineNotice


class ModelChanged(Message):
    """Something the ModelController emitted (model_controller.py), on its way to the panes."""

    def __init__(self, change: object) -> None:
        super().__init__()
        self.change = change


class ModelActions(AppBase):
    @property
    def loaded(self) -> Optional[Loaded]:
        return self.model.loaded

    @property
    def mode(self) -> str:
        """The quantization mode of the next load."""
        return self.model.mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.model.mode = mode

    @property
    def device(self) -> str:
        return self.model.device

    @device.setter
    def device(self, device: str) -> None:
        self.model.device = device

    def on_model_changed(self, message: ModelChanged) -> None:
        """Route what the ModelController emitted: the panes' state, downloads, exact figures."""
        change = message.change
        try:
            if isinstance(change, StateChanged):
                self._show_model_state(change)
            elif isinstance(change, BaseModelLoaded):
                self.action_completion_mode()  # a base model was never taught the chat roles
            elif isinstance(change, DownloadChanged):
                self.model.job_updated(change.job)
                self.models_pane.update_job(change.job)
            elif isinstance(change, FiguresArrived):
                self.models_pane.figures_arrived()
        except (NoMatches, ScreenStackError):  # the app is closing: the panes are gone
            pass

    def tell(self, note: Note) -> None:
        """The ModelController's toast, shown at once."""
        self.notify(note.message, severity=note.severity, title=note.title, timeout=note.timeout)

    @property
    def engine_notice(self) -> EngineNotice:
        return self.query_one("#engine-notice", EngineNotice)

    def action_reload(self) -> None:
        self.model.reload()

    def action_toggle_engine_log(self) -> None:
        pane = self.models_pane
        if not pane.log_shown and self.current_pane != "models":  # from the palette: show where it is
            self._focus_next = pane.option_list
            self.current_pane = "models"
        pane.toggle_engine_log()

    def action_kill_engine(self) -> None:
        self.model.kill_engine()

    def _show_model_state(self, change: StateChanged) -> None:
        notice, state = self.engine_notice, self.model.notice
        if state is None:
            notice.show_notice(None)
        elif state.kind == "exited":
            notice.show_exited(state.message, state.again, state.log_path)
        else:
            notice.show_unresponsive(state.message, state.seconds)
        if change.progress_only:
            self.models_pane.refresh_info()
            self.refresh_status()
            return
        if change.rows:
            self.models_pane.reload()
        else:
            self.models_pane.refresh_info()
            self.models_pane.refresh_rows()
        self.chat_pane.refresh_header()
        self.monitor_pane.show_placement(self.loaded)  # an offload stays on top while the model is loaded
        self.refresh_status()
        self.refresh_bindings()

    def request_load(self, spec: str, mode: Optional[str] = None, label: Optional[str] = None) -> None:
        if self.chat_pane.streaming:
            self.notify("A reply is still streaming: press Esc to stop it first.", severity="warning")
            return
        self.model.request_load(spec, mode, label)

    def action_load(self) -> None:
        row = self.models_pane.highlighted_row()
        spec = self.model.last_spec or (str(row.folder) if row is not None and row.folder is not None else "")

        # where the engine can switch (engine/choose.SwitchingEngine), the dialog offers the choice
        use = getattr(self.engine, "use", None)

        def done(result: Any) -> None:
            if result is not None:
                spec, mode, device, engine = result
                if device is not None:  # checked by the dialog (glmtui.devices)
                    self.device = device
                if engine is not None and use is not None:
                    use(engine)  # the engine for this load (and the next ones)
                self.request_load(spec, mode)

        # an endpoint's server decides where its model runs: no device field then
        from .dialogs.load import LoadModal  # imported when first opened, not for the first frame

        self.push_screen(LoadModal(spec, self.mode, MODES, device=None if self.endpoint else self.device,
                                   engine_kind=getattr(self.engine, "wanted", None) if use is not None else None,
                                   fit_check=self.fit_refusal), done)

    def fit_refusal(self, spec: str, mode: str, device: str) -> Optional[str]:
        """Why loading ``spec`` in ``mode`` on ``device`` would not fit this machine's free memory, or None
        (it fits, or nothing is known: the load itself says what is wrong with a spec). The load dialog asks."""
        if self.endpoint:
            return None
        from glmtui.resolve import resolve_model

        from .figures import figures_for, refusal, verdicts

        found = resolve_model(spec, self.paths.models_dir)
        if found.folder is None or not (Path(found.folder) / "config.json").is_file():
            return None
        where, free = self.monitor_pane.free_for_model(device)
        figs = figures_for(self.model.exact, found.folder, where)
        verdict = verdicts(figs, where, free).get(mode)
        if verdict is None or verdict.verdict != "won't fit":
            return None
        return f"{found.name} in {mode} would not fit: {refusal(mode, figs, where, free)}"

    def action_unload(self) -> None:
        if self.loaded is not None and self.chat_pane.streaming:
            self.notify("A reply is still streaming: press Esc to stop it first.", severity="warning")
            return
        self.model.unload()

    def action_quantization(self) -> None:
        if self.endpoint:
            self.notify("The server at the endpoint decides how its model is quantized.", severity="warning")
            return
        def done(mode: Optional[str]) -> None:
            if mode is not None:
                self.model.choose_mode(mode)

        from .modals import ModeModal

        self.push_screen(ModeModal(self.mode, choices=lambda: self.models_pane.mode_choices(self.mode)), done)

    def action_download_model(self) -> None:
        row = self.models_pane.highlighted_row()
        if row is None or not (row.entry.hf_repo or row.entry.modelscope_repo):
            self.notify("Highlight a catalogue model under Models to download it.", severity="warning")
            return
        if row.status.state == "complete":
            self.notify(f"{row.entry.name} is already downloaded.", timeout=3)
            return
        self.model.download(row.entry, self.download_source)

    @property
    def download_source(self) -> str:
        """Where downloads come from: "hf" or "modelscope" (config.toml [ui] download_source)."""
        source = self.prefs.get("download_source")
        return source if source in ("hf", "modelscope") else "hf"

    def action_toggle_download_source(self) -> None:
        source = "modelscope" if self.download_source == "hf" else "hf"
        self._save_prefs(download_source=source)
        self.models_pane.refresh_detail()
        self.notify(f"Downloads now come from {'ModelScope' if source == 'modelscope' else 'Hugging Face'}.",
                    timeout=3)

    def download_endpoint(self, source: str) -> EndpointInUse:
        """The URL downloads from ``source`` go to, and who set it (the Models pane shows it)."""
        return endpoint_in_use(source, self.paths.config_file)

    def action_set_download_endpoint(self) -> None:
        """``e`` in Models: the current source's endpoint (a mirror, or the public hub), saved under [hub]."""
        current = self.download_endpoint(self.download_source)

        def done(url: Optional[str]) -> None:
            if url is None:
                return
            key = "hf_endpoint" if current.source == "hf" else "modelscope_endpoint"
            try:
                prefs_file.save_table(self.paths.config_file, "hub", {key: url or None})
            except OSError as exc:
                self.notify(f"Could not save the endpoint to {self.paths.config_file}: {exc}", severity="warning")
                return
            now = self.download_endpoint(current.source)
            self.models_pane.refresh_detail()
            if now.set_by not in ("", "config.toml"):  # the variable wins over the file
                self.notify(f"Saved; {now.set_by} is set and still wins: downloads use {now.url}.",
                            severity="warning", timeout=6)
            else:
                self.notify(f"{NAMES[current.source]} downloads now come from {now.url}"
                            f"{'' if url else ' (the public hub)'}.", timeout=4)

        from .dialogs.endpoint import EndpointModal

        self.push_screen(EndpointModal(current), done)

    def action_cancel_download(self) -> None:
        row = self.models_pane.highlighted_row()
        self.model.cancel_download(row.entry if row is not None else None)

    def free_memory(self) -> tuple[str, Optional[int]]:
        return self.monitor_pane.free_for_model(self.device)
