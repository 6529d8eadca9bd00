"""SwitchingEngine (engine/choose.py): the TUI's engine, switched between glmtui's own and the managed
vLLM server by the load dialog. Both kinds here are real in-process workers (vLLM runs only in the
opt-in peer tests): what is checked is the order — the previous engine lets go of its model before
the next load starts, listeners follow the switch, and a switch under way ends with shutdown."""

from __future__ import annotations

import pytest

from engine_helpers import EventLog
from glmtui.engine.choose import SwitchingEngine
from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded, LoadProgress, Unloaded
from glmtui.engine.worker import InferenceWorker
from helpers import wait_until


def make_switching(log):
    made: dict[str, list] = {"transformers": [], "vllm": []}

    def make(kind):
        worker = InferenceWorker()
        made[kind].append(worker)
        return worker

    return SwitchingEngine("transformers", listener=log, make=make).start(), made


@pytest.mark.slow  # two loads
def test_a_switch_unloads_first_then_loads_on_the_other_engine(native_glm):
    log = EventLog()
    engine, made = make_switching(log)
    try:
        assert isinstance(log.wait(engine.load(str(native_glm), "fp32")), Loaded)
        first = made["transformers"][0]
        engine.use("vllm")
        assert engine.current is first and engine.model_info is not None  # nothing changes before the load
        assert engine.load(str(native_glm), "fp32") == 0  # it waits for the first engine to let go
        assert engine.current is made["vllm"][0] and engine.kind == "vllm"
        wait_until(lambda: sum(isinstance(e, Loaded) for e in log.events) == 2, timeout=120, what="the second load")
        order = [type(e).__name__ for e in log.events if isinstance(e, (Loaded, Unloaded, LoadProgress))]
        unloaded = order.index("Unloaded")
        # nothing of the second load before the first model is gone
        assert order[unloaded - 1] == "Loaded" and "Loaded" in order[unloaded + 1:]
        assert order.count("Unloaded") == 1 and not first.alive
        rid = engine.generate([ChatMessage("user", "hi")], GenerationParams(4, 0.0))
        wait_until(lambda: any(isinstance(e, Finished) and e.request_id == rid for e in log.events),
                   what="a reply on the second engine")  # the listener followed the switch
    finally:
        engine.shutdown()


@pytest.mark.slow  # a model load
def test_a_switch_with_nothing_loaded_loads_at_once(native_glm):
    log = EventLog()
    engine, made = make_switching(log)
    try:
        engine.use("vllm")
        rid = engine.load(str(native_glm), "fp32")
        assert rid != 0 and isinstance(log.wait(rid), Loaded)
        assert not any(isinstance(e, Unloaded) for e in log.events)
        with pytest.raises(ValueError, match="unknown engine"):
            engine.use("llama.cpp")
    finally:
        engine.shutdown()
