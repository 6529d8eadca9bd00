"""Predicted memory in the Models pane and the F8 dialog (issue 16): the formula's figures marked
"(estimate)" until the exact count (a subprocess, engine/predict.py) arrives, an unknown
architecture predicted as nothing, and a load that would not fit refused until confirmed.

Tiny real models, the real thread worker; the free memory is the hardware edge: a fake NVML
under the real Sampler (GPU) or a frozen host snapshot (RAM)."""

from __future__ import annotations

import json
import shutil

import pytest
from textual.widgets import Static

from fake_nvml import FakeNVML, gpu
from glmtui.config import default_paths
from glmtui.engine import exact_cache, launcher, memory
from glmtui.monitor import History, HostSnapshot, MonitorSnapshot, Sampler
from glmtui.ui.app import GlmApp
from glmtui.ui.modals import ModeModal
from glmtui.ui.monitor import fmt_bytes
from helpers import GREEDY, FrozenSampler, host_only_snapshot, notifications, wait_for

GiB = 2**30
TIMEOUT = 180.0  # a first exact count imports torch in a subprocess: seconds, more on a loaded machine


pytestmark = pytest.mark.usefixtures("in_process_engine")  # the model in a thread (conftest)


@pytest.fixture(autouse=True)
def fresh_counts(monkeypatch):
    """No exact result kept from an earlier test: each one is counted by its own subprocess."""
    monkeypatch.setattr(exact_cache, "_memo", {})


def exact(folder, device):
    from glmtui.engine import predict  # torch: the test's process, never the UI's code path

    return predict.predict_dir(folder, device=device)


def detail_text(app) -> str:
    return str(app.models_pane.query_one("#model-detail", Static).content)


def show_folder(app, folder) -> None:
    """List ``folder`` under Models and highlight it (the detail is rendered synchronously)."""
    pane = app.models_pane
    app.model.extra_model_paths.append(str(folder))
    pane.reload()
    ol = pane.option_list
    ids = [ol.get_option_at_index(i).id for i in range(ol.option_count)]
    ol.highlighted = ids.index(f"dir:{folder.resolve()}")
    pane.refresh_detail()


def ram_snapshot(available: int) -> MonitorSnapshot:
    base = host_only_snapshot()
    host = HostSnapshot(ram_total=32 * GiB, ram_used=32 * GiB - available, ram_available=available,
                        process_rss=512 * 2**20, cpu_percent=12.0, process_cpu_percent=3.0)
    return MonitorSnapshot(timestamp=0.0, nvml_state="no_gpu", message=base.message, driver_version=None,
                           gpus=(), host=host, torch=None, history=History(timestamps=(0.0,)))


@pytest.mark.slow
async def test_the_estimate_first_then_the_exact_figures_in_the_pane_and_f8(native_glm, monkeypatch):
    # a count in a fresh interpreter (seconds): a fork of a ready launcher could answer before the pane is read
    monkeypatch.setattr(launcher, "_shared", launcher.Launcher())
    formula = memory.predict_for_dir(native_glm, device="cpu")
    counted = exact(native_glm, "cpu")
    app = GlmApp(mode="fp32", sampler=FrozenSampler(host_only_snapshot()))
    async with app.run_test(size=(160, 60)) as pilot:
        await wait_for(pilot, lambda: app.monitor_pane.snapshot is not None, what="the monitor")
        show_folder(app, native_glm)
        text = detail_text(app)  # before the exact count can have come back
        assert "available RAM) (estimate):" in text and "counting exactly…" in text
        for pred in formula.values():
            assert f"weights {fmt_bytes(pred.weight_bytes)}" in text

        await pilot.press("f8")  # the dialog opens on the estimate and is updated in place
        assert isinstance(app.screen, ModeModal)
        assert f"predicted for {native_glm.name} (estimate)" in app.screen.note

        await wait_for(pilot, lambda: "(estimate)" not in app.screen.note, timeout=TIMEOUT, what="the exact count")
        assert app.screen.note.startswith(f"predicted for {native_glm.name}\n")
        prompts = {m: str(p) for m, p in app.screen.rows}
        for mode, pred in counted.items():
            assert f"{fmt_bytes(pred.total_bytes)}" in prompts[mode]
            assert f"weights {fmt_bytes(pred.weight_bytes)}" in prompts[mode]
        await pilot.press("escape")

        text = detail_text(app)
        assert "(estimate)" not in text and "counting exactly" not in text
        assert "available RAM):" in text
        for mode, pred in counted.items():
            assert f"{mode:<5}{fmt_bytes(pred.total_bytes):>10}" in text
            assert f"weights {fmt_bytes(pred.weight_bytes)}" in text
        # the exact count differs from the formula (it counts the rotary buffers too) and is what is shown
        assert counted["fp32"].weight_bytes != formula["fp32"].weight_bytes
        assert counted["fp32"].source == "meta"


@pytest.mark.slow
async def test_exact_figures_that_arrive_while_the_f8_dialog_opens_are_shown(native_glm):
    counted = memory.predict_exact_subprocess(native_glm, "cpu")  # what the counting thread gets
    assert counted.predictions and counted.predictions["fp32"].source == "meta"
    exact_cache._memo.clear()  # the app's own count runs a fresh predictor (seconds): the estimate shows first
    shutil.rmtree(default_paths().cache_dir / "predictions", ignore_errors=True)
    app = GlmApp(mode="fp32", sampler=FrozenSampler(host_only_snapshot()))
    async with app.run_test(size=(160, 60)) as pilot:
        await wait_for(pilot, lambda: app.monitor_pane.snapshot is not None, what="the monitor")
        show_folder(app, native_glm)
        counts = app.model.exact
        key = (str(native_glm.resolve()), "cpu")
        assert key not in counts.results  # the estimate is shown, the count asked for
        counts.cancel()  # its predictor ends; the result is delivered below instead
        app.action_quantization()
        modal = app.screen_stack[-1]
        assert isinstance(modal, ModeModal) and "(estimate)" in modal.note
        counts.deliver(key, counted)
        app.models_pane.figures_arrived()  # before the dialog's widgets exist
        await pilot.pause()
        assert app.screen is modal
        assert "(estimate)" not in modal.note and not app._exception
        prompts = {m: str(p) for m, p in modal.rows}
        assert f"weights {fmt_bytes(counted.predictions['fp32'].weight_bytes)}" in prompts["fp32"]
        shown = str(modal.query_one("#modes").get_option("fp32").prompt)
        assert f"weights {fmt_bytes(counted.predictions['fp32'].weight_bytes)}" in shown


@pytest.mark.slow
async def test_an_unknown_architecture_is_predicted_as_nothing(tmp_path):
    folder = tmp_path / "odd-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "surely_not_an_architecture", "architectures": ["SurelyNotForCausalLM"],
        "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128,
        "vocab_size": 1000, "max_position_embeddings": 512,
    }))
    app = GlmApp(mode="fp32", sampler=FrozenSampler(host_only_snapshot()))
    async with app.run_test(size=(160, 60)) as pilot:
        await wait_for(pilot, lambda: app.monitor_pane.snapshot is not None, what="the monitor")
        show_folder(app, folder)
        assert "(estimate)" in detail_text(app)  # the hand formula's guess, marked, until transformers answers
        await wait_for(pilot, lambda: "unknown architecture" in detail_text(app), timeout=TIMEOUT,
                       what="the exact count's answer")
        text = detail_text(app)
        assert "✗ unknown architecture 'surely_not_an_architecture'" in text and "no prediction" in text
        assert "Predicted on" not in text and "weights " not in text and "fits" not in text

        await pilot.press("f8")
        assert isinstance(app.screen, ModeModal)
        assert "unknown architecture 'surely_not_an_architecture'" in app.screen.note
        assert all(str(prompt).replace("▶", "").split() == [mode] for mode, prompt in app.screen.rows)  # no figures
        assert not app.screen.refusals
        await pilot.press("escape")


@pytest.mark.slow
async def test_f8_refuses_a_mode_that_would_not_fit_the_gpu_until_confirmed(native_glm):
    counted = exact(native_glm, "cuda")
    free = counted["fp32"].total_bytes - 1  # fp32 misses the free memory by one byte; bf16 fits
    assert counted["bf16"].total_bytes < free
    total = 24 * GiB
    nvml = FakeNVML([gpu(total=total, used_v1=total - free, used_v2=total - free)])
    app = GlmApp(model=str(native_glm), mode="bf16", default_params=GREEDY, sampler=Sampler(nvml=nvml),
                 monitor_interval=0.25)
    async with app.run_test(size=(160, 60)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, timeout=120, what="the bf16 load")
        assert app.loaded.mode == "bf16"
        await wait_for(pilot, lambda: app.monitor_pane.snapshot is not None, what="the monitor")
        assert app.free_memory() == ("cuda", free)

        await pilot.press("f8")
        modal = app.screen
        assert isinstance(modal, ModeModal)
        await wait_for(pilot, lambda: "(estimate)" not in modal.note, timeout=TIMEOUT,
                       what="the exact count on the GPU")
        prompts = {m: str(p) for m, p in modal.rows}
        assert "won't fit" in prompts["fp32"] and "won't fit" not in prompts["bf16"]
        assert set(modal.refusals) >= {"fp32"} and "bf16" not in modal.refusals
        ol = modal.query_one("#modes")
        ids = [ol.get_option_at_index(i).id for i in range(ol.option_count)]

        ol.highlighted = ids.index("fp32")
        await pilot.press("enter")  # refused: the reason, and the dialog stays
        await pilot.pause()
        assert app.screen is modal
        refusal = str(modal.query_one("#mode-refusal", Static).content)
        assert f"fp32 would not fit: needs {fmt_bytes(counted['fp32'].total_bytes)}, only {fmt_bytes(free)}" in refusal
        assert "short 1 B" in refusal and "Enter again loads it anyway" in refusal

        ol.highlighted = ids.index("bf16")  # moving away takes the refusal back
        await pilot.pause()
        assert modal.armed is None and not modal.query_one("#mode-refusal", Static).display
        ol.highlighted = ids.index("fp32")
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is modal and modal.armed == "fp32"
        await pilot.press("enter")  # the second press confirms
        await wait_for(pilot, lambda: app.loaded is not None and app.loaded.mode == "fp32", timeout=120,
                       what="the confirmed fp32 load")


@pytest.mark.slow
async def test_enter_in_models_refuses_a_load_that_would_not_fit_in_ram_until_pressed_again(native_glm):
    counted = exact(native_glm, "cpu")
    app = GlmApp(mode="fp32", default_params=GREEDY,
                 sampler=FrozenSampler(ram_snapshot(counted["fp32"].total_bytes - 1)))
    async with app.run_test(size=(160, 60)) as pilot:
        await wait_for(pilot, lambda: app.monitor_pane.snapshot is not None, what="the monitor")
        show_folder(app, native_glm)
        pane = app.models_pane
        await wait_for(pilot, lambda: "counting exactly" not in detail_text(pane.app), timeout=TIMEOUT,
                       what="the exact count")
        assert "fp32 " in detail_text(app) and "won't fit" in detail_text(app)
        pane.option_list.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.loaded is None and app.model.load_stage is None
        assert any("would not fit" in n and "Enter again loads it anyway" in n for n in notifications(app))
        assert "✗ fp32 would not fit: needs" in detail_text(app) and "available RAM (short 1 B)" in detail_text(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.loaded is not None, timeout=120, what="the confirmed load")
        assert app.loaded.mode == "fp32"


# ---------------------------------------------------------------- placement after a load


@pytest.mark.slow
def test_a_load_says_where_its_layers_went_through_the_worker_and_the_engine_process(native_glm, tmp_path):
    from engine_helpers import EventLog, start_worker
    from glmtui.engine.events import Loaded
    from glmtui.engine.process import EngineProcess

    layers = json.loads((native_glm / "config.json").read_text())["num_hidden_layers"]
    worker, log = start_worker()
    try:
        loaded = log.wait(worker.load(str(native_glm), "fp32"))
    finally:
        worker.shutdown()
    assert isinstance(loaded, Loaded), loaded
    assert loaded.placement == f"all {layers} layers on cpu"
    assert loaded.layer_devices == (("cpu", 0, layers - 1),) and loaded.offloaded == ()

    log = EventLog()  # the same fields across the engine process's pipe
    engine = EngineProcess(log, log_dir=tmp_path / "logs", keep_spare=False).start()
    try:
        through = log.wait(engine.load(str(native_glm), "fp32"), timeout=180)
    finally:
        engine.shutdown()
    assert isinstance(through, Loaded), through
    assert (through.placement, through.layer_devices, through.offloaded) == (
        loaded.placement, loaded.layer_devices, loaded.offloaded)


@pytest.mark.slow
async def test_an_offloaded_model_is_said_loudly_while_it_is_loaded(native_glm):
    """No GPU here, so nothing is really offloaded: the Loaded event of a real load carries the placement
    engine/placement.py makes of a device map that put the last layer on the CPU (the hardware edge)."""
    import dataclasses

    from glmtui.engine.placement import placement_from_map

    layers = json.loads((native_glm / "config.json").read_text())["num_hidden_layers"]
    device_map = {"model.embed_tokens": 0, **{f"model.layers.{i}": 0 for i in range(layers - 1)},
                  f"model.layers.{layers - 1}": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    placed = placement_from_map(device_map)
    assert placed.offloaded == ("cpu",)

    app = GlmApp(model=str(native_glm), mode="fp32", default_params=GREEDY,
                 sampler=FrozenSampler(host_only_snapshot()))
    async with app.run_test(size=(200, 50)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, timeout=120, what="the load")
        status = app.query_one("#status", Static)
        monitor = app.monitor_pane.query_one("#monitor-body", Static)
        assert "OFFLOADED" not in str(status.content) and "OFFLOADED" not in _plain(monitor)
        info = str(app.models_pane.query_one("#loaded-info", Static).content)
        assert f"all {layers} layers on cpu" in info  # the placement of a real load, in the Models pane

        offloaded = dataclasses.replace(app.loaded, device="cuda:0", placement=placed.summary(),
                                        layer_devices=placed.runs, offloaded=placed.offloaded)
        app._engine_listener(offloaded)  # the way the engine's events reach the UI
        await wait_for(pilot, lambda: app.loaded is offloaded, what="the Loaded event")
        await pilot.pause()
        loud = f"⚠ OFFLOADED 1/{layers} layers to cpu (slow)"
        assert loud in str(status.content)
        assert f"⚠ OFFLOADED: 1 of {layers} layers on cpu, not the GPU" in _plain(monitor)
        info = str(app.models_pane.query_one("#loaded-info", Static).content)
        assert placed.summary() in info and info.count("OFFLOADED") == 1

        app.monitor_pane.show(host_only_snapshot())  # later samples and replies keep it there
        app.generation_state_changed()
        assert loud in str(status.content) and "OFFLOADED" in _plain(monitor)

        await pilot.press("f9")  # gone with the model
        await wait_for(pilot, lambda: app.loaded is None, what="the unload")
        await pilot.pause()
        assert "OFFLOADED" not in str(status.content) and "OFFLOADED" not in _plain(monitor)


@pytest.mark.slow
async def test_an_offload_shows_the_measured_decode_speed_and_each_gpu_its_share(native_glm):
    """Issue 16's placement: the offload warning carries the tok/s the replies really decode at (a real
    reply of the tiny model), and with two GPUs the monitor shows under each what the model holds there.
    The GPUs are the hardware edge: a device map over cuda:0/cuda:1/cpu (engine/placement.py) and a fake
    NVML under the real Sampler, whose process list counts this process (the in-process engine)."""
    import dataclasses
    import os

    from glmtui.engine.events import Finished
    from glmtui.engine.placement import placement_from_map
    from helpers import send

    layers = json.loads((native_glm / "config.json").read_text())["num_hidden_layers"]
    # GPU 0 the embeddings only, GPU 1 layers 0 .. n-2, the last layer and the head on the CPU
    device_map = {"model.embed_tokens": 0, **{f"model.layers.{i}": 1 for i in range(layers - 1)},
                  f"model.layers.{layers - 1}": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    placed = placement_from_map(device_map)
    weights = (("cpu", 5 * 2**20), ("cuda:0", 3 * 2**20), ("cuda:1", 7 * 2**20))
    me = os.getpid()
    nvml = FakeNVML([gpu(compute=[(me, 2 * GiB), (4242, GiB)]),
                     gpu(name="NVIDIA A100", total=80 * GiB, compute=[(me, 5 * GiB)])])
    app = GlmApp(model=str(native_glm), mode="fp32", default_params=GREEDY, sampler=Sampler(nvml=nvml),
                 monitor_interval=0.25)
    async with app.run_test(size=(200, 60)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, timeout=120, what="the load")
        finished: list = []
        app.engine.add_listener(lambda e: finished.append(e) if isinstance(e, Finished) else None)
        offloaded = dataclasses.replace(app.loaded, device="cuda:0", placement=placed.summary(),
                                        layer_devices=placed.runs, offloaded=placed.offloaded, device_bytes=weights)
        app.decode_speed.note(offloaded)  # the engine's listeners, in the order the app registered them
        app._engine_listener(offloaded)
        await wait_for(pilot, lambda: app.loaded is offloaded, what="the Loaded event")
        status = app.query_one("#status", Static)
        monitor = app.monitor_pane.query_one("#monitor-body", Static)
        assert f"⚠ OFFLOADED 1/{layers} layers to cpu (slow)" in str(status.content)  # no reply yet: no figure

        await send(pilot, app, "hello")
        tps = next(e for e in finished if e.completion_tokens > 1).tokens_per_second
        assert tps and app.decode_speed.rate == pytest.approx(tps)
        loud = f"⚠ OFFLOADED 1/{layers} layers to cpu - decoding {tps:.1f} tok/s"
        await wait_for(pilot, lambda: loud in str(status.content), timeout=10, what="the status bar's figure")

        measured = f"decoding {tps:.1f} tok/s (measured on the replies since the load)"
        await wait_for(pilot, lambda: measured in _plain(monitor), timeout=10, what="the monitor's figure")
        text = _plain(monitor)
        gpu0, gpu1 = text.split("GPU0 ")[1].split("GPU1 ")
        assert "model weights 3.0 MiB · glmtui holds 2.0 GiB" in gpu0
        held = f"{layers - 1} layer{'s' if layers > 2 else ''} ({'0' if layers == 2 else f'0-{layers - 2}'})"
        assert f"model {held} · weights 7.0 MiB · glmtui holds 5.0 GiB" in gpu1

        await pilot.press("f9")  # gone with the model: no GPU share, no speed
        await wait_for(pilot, lambda: app.loaded is None, what="the unload")
        await pilot.pause()
        assert "model " not in _plain(monitor) and app.decode_speed.rate is None


def _plain(static: Static) -> str:
    content = static.content
    renderables = getattr(content, "renderables", None)
    if renderables is not None:
        return "\n".join(r.plain for r in renderables)
    return str(content)


# ---------------------------------------------------------------- the engine's own check before building


def test_the_engines_check_uses_the_exact_weights_and_the_free_memory_of_the_gpus_it_may_use(native_glm):
    """Fake GPU capacities (the driver's free figures are the hardware edge); the real check and counts."""
    from glmtui.engine import checks

    config = json.loads((native_glm / "config.json").read_text())
    weights = exact(native_glm, "cuda")["fp32"].weight_bytes
    assert weights != memory.predict_all(config, device="cuda")["fp32"].weight_bytes  # the formula misses buffers

    checks.check_fits_machine(config, "fp32", "cuda:0", gpu_free=[weights])
    with pytest.raises(checks.CheckFailed, match=r"weights alone need .* more than the .* free on GPU 0\. Try int8"):
        checks.check_fits_machine(config, "fp32", "cuda:0", gpu_free=[weights - 1])  # one byte short, exactly

    # --device auto (loading resolves it to "cuda"): the layers spread over every GPU, so their free memory adds up
    halves = [weights // 2, weights - weights // 2]
    checks.check_fits_machine(config, "int8", "cuda", gpu_free=[weights, 0])
    checks.check_fits_machine(config, "fp32", "cuda", gpu_free=halves, host_bytes=0)
    with pytest.raises(checks.CheckFailed, match=r"free on the 2 GPUs\. Try int8"):
        checks.check_fits_machine(config, "fp32", "cuda", gpu_free=[halves[0], halves[1] - 1], host_bytes=0)
    # cuda:N is that GPU alone
    with pytest.raises(checks.CheckFailed, match=r"free on GPU 1\."):
        checks.check_fits_machine(config, "fp32", "cuda:1", gpu_free=halves)
    # 16-bit modes over several GPUs may spill to host RAM (loading reports it as an offload)
    checks.check_fits_machine(config, "fp32", "cuda", gpu_free=[halves[0], halves[1] - 1], host_bytes=1)
    with pytest.raises(checks.CheckFailed, match=r"and 0\.0 GiB of host RAM they may spill to"):
        checks.check_fits_machine(config, "fp32", "cuda", gpu_free=[1, 1], host_bytes=2)


def test_the_engines_check_says_when_its_figure_is_only_the_formulas(native_glm):
    from glmtui.engine import checks

    config = dict(json.loads((native_glm / "config.json").read_text()), model_type="surely_not_an_architecture")
    needed = memory.predict_all(config, device="cuda")["fp32"].weight_bytes
    with pytest.raises(checks.CheckFailed, match=r"a hand-formula estimate: transformers could not count this model"):
        checks.check_fits_machine(config, "fp32", "cuda:0", gpu_free=[needed - 1])
    checks.check_fits_machine(config, "fp32", "cuda:0", gpu_free=[needed])
