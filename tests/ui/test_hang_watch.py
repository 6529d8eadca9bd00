"""HangWatch: a reply whose engine went silent while its device is idle is a hang; a silent but busy
engine (a long prefill) and a silent engine with nothing to generate are not. The clock is faked;
GPU samples come from the real Sampler over a fake NVML, CPU samples are the host figures it would give."""

from __future__ import annotations

import dataclasses

from fake_nvml import FakeNVML, gpu
from glmtui.engine.events import EngineExited, EngineUnresponsive, Failed, Finished, Started, Token
from glmtui.monitor import Sampler
from glmtui.ui.hang_watch import HangWatch, device_idle, silence_setting
from helpers import host_only_snapshot

ENGINE_PID = 4321


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cpu_sample(percent):
    snap = host_only_snapshot()
    return dataclasses.replace(snap, host=dataclasses.replace(snap.host, engine_pids=(ENGINE_PID,),
                                                              engine_cpu_percent=percent))


def finished(request_id: int) -> Finished:
    return Finished(request_id, "text", 3, 5, 0.1, 10.0, 1.0, "stop")


def test_a_silent_reply_on_an_idle_cpu_is_a_hang_until_the_engine_speaks_again():
    clock = Clock()
    watch = HangWatch(30.0, clock=clock)
    watch.event(Started(1, prompt_tokens=3))
    watch.event(Token(1, "a"))
    clock.now += 29.0
    assert watch.check(cpu_sample(0.0), "cpu") is None  # idle, but not silent long enough
    clock.now += 2.0
    assert watch.check(cpu_sample(30.0), "cpu") is None  # silent, but busy
    assert watch.check(cpu_sample(0.0), "cpu") is None  # one idle sample: could be a pause between samples
    change = watch.check(cpu_sample(0.0), "cpu")
    assert change is not None and change[0] == 31.0
    assert change[1].startswith("no token for 31 s and the engine's CPU idle")
    assert watch.check(cpu_sample(0.0), "cpu") is None  # said once
    watch.event(EngineUnresponsive(0, 20.0, "the ping's own words"))  # not the engine speaking
    assert watch.check(cpu_sample(0.0), "cpu") is None
    watch.event(Token(2, "b"))  # it answers again: the notice goes
    assert watch.check(cpu_sample(50.0), "cpu") == (0.0, "")
    assert watch.check(cpu_sample(0.0), "cpu") is None


def test_a_silent_engine_busy_on_its_prompt_is_not_hung():
    clock = Clock()
    watch = HangWatch(30.0, clock=clock)
    watch.event(Started(1, prompt_tokens=50_000))  # a long prefill: no token for minutes, the CPU busy
    for _ in range(10):
        clock.now += 30.0
        assert watch.check(cpu_sample(97.0), "cpu") is None
    # one idle sample between busy ones (the monitor's tick fell in a pause) is not enough
    assert watch.check(cpu_sample(0.0), "cpu") is None
    assert watch.check(cpu_sample(95.0), "cpu") is None
    assert watch.check(cpu_sample(0.0), "cpu") is None
    assert watch.check(cpu_sample(0.0), "cpu") is not None  # then idle in a row: hung


def test_a_silent_engine_with_no_reply_running_is_not_hung():
    clock = Clock()
    watch = HangWatch(30.0, clock=clock)
    clock.now += 100.0
    assert [watch.check(cpu_sample(0.0), "cpu") for _ in range(3)] == [None] * 3  # nothing ever started
    watch.event(Started(1, prompt_tokens=3))
    watch.event(finished(1))
    watch.event(Started(2, prompt_tokens=3))
    watch.event(Failed(2, "cancelled", "generate"))
    clock.now += 100.0
    assert [watch.check(cpu_sample(0.0), "cpu") for _ in range(3)] == [None] * 3  # both ended
    # a hang reported, then the process ended (killed with F7): the watch lets go of the reply
    watch.event(Started(3, prompt_tokens=3))
    clock.now += 40.0
    assert watch.check(cpu_sample(0.0), "cpu") is not None  # idle all along
    watch.event(EngineExited(0, "killed", "signal"))
    assert watch.check(cpu_sample(0.0), "cpu") == (0.0, "")
    clock.now += 100.0
    assert watch.check(cpu_sample(0.0), "cpu") is None


def test_on_a_gpu_the_engines_gpu_must_be_idle():
    fake = FakeNVML([gpu(util=0, compute=[(999, 100 << 20)]), gpu(util=85, compute=[(ENGINE_PID, 700 << 20)])])
    sampler = Sampler(nvml=fake, engine_pids=lambda: (ENGINE_PID,))
    clock = Clock()
    watch = HangWatch(30.0, clock=clock)
    watch.event(Started(1, prompt_tokens=3))
    clock.now += 60.0
    # NVML lists the engine on GPU 1 (CUDA may call it cuda:0): that one is busy, GPU 0's idleness is not its
    assert device_idle(sampler.sample(), "cuda:0") is False
    assert watch.check(sampler.sample(), "cuda:0") is None and watch.check(sampler.sample(), "cuda:0") is None
    fake.gpus[1]["util"] = 0
    assert watch.check(sampler.sample(), "cuda:0") is None
    change = watch.check(sampler.sample(), "cuda:0")
    assert change is not None and change[1].startswith("no token for 60 s and the GPU idle")
    # utilization NVML cannot read: no verdict either way
    fake.gpus[1]["util"] = fake.NVMLError_NotSupported
    assert device_idle(sampler.sample(), "cuda:0") is None
    # without the engine in NVML's list (a container's pids), the GPU of the device's index
    fake.gpus[1]["compute"] = []
    fake.gpus[1]["util"] = 0
    assert device_idle(sampler.sample(), "cuda:1") is True and device_idle(sampler.sample(), "cuda:0") is True
    fake.gpus[0]["util"] = 40
    assert device_idle(sampler.sample(), "cuda:0") is False


def test_no_engine_process_gives_no_verdict():
    snap = host_only_snapshot()  # the model in this process (or remote): no engine CPU figure
    assert device_idle(snap, "cpu") is None and device_idle(None, "cpu") is None
    assert device_idle(snap, "cuda:0") is None  # no GPU in the snapshot


def test_the_setting():
    assert silence_setting({}) == (30.0, "")
    assert silence_setting({"hang_after": 90}) == (90.0, "")
    seconds, problem = silence_setting({"hang_after": "soon"})
    assert seconds == 30.0 and "hang_after = 'soon'" in problem
    assert silence_setting({"hang_after": 1})[1] and silence_setting({"hang_after": True})[1]
