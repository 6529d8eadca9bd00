"""The code interpreter runs a real Jupyter kernel (ipykernel) in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from agent_helpers import tiny_png
from helpers import wait_until

pytest.importorskip("ipykernel", reason="the interpreter tests need ipykernel (pip install ipykernel)")
pytest.importorskip("jupyter_client", reason="the interpreter tests need jupyter_client")

from glmtui.agent.capture import human_bytes  # after importorskip
from glmtui.agent.interpreter import CodeInterpreter, default_workdir  # after importorskip


def gone(pid: int, within: float = 20.0) -> bool:
    """The process ends within ``within`` seconds (a zombie waiting for a parent that is not us counts as ended)."""
    def ended() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return wait_until(ended, within, f"process {pid} to end", interval=0.1)


@pytest.fixture(scope="module")
def interp(tmp_path_factory):
    ci = CodeInterpreter(tmp_path_factory.mktemp("data") / "interpreter", timeout=60, interrupt_grace=3)
    ci.start()
    yield ci
    ci.shutdown()


def test_default_workdir_is_under_the_data_dir(isolated_home):
    folder = default_workdir()
    assert folder == isolated_home / "data" / "interpreter" and folder.is_dir()


def test_print_result_and_working_folder(interp):
    result = interp.run("import os\nprint('hello', 6 * 7)\nos.getcwd()")
    assert result.status == "ok"
    assert result.text == f"hello 42\n{str(interp.workdir)!r}"
    assert interp.run("import sys; sys.stderr.write('careful\\n');").text == "careful"


def test_exception_text(interp):
    result = interp.run("def f():\n    return {}['missing']\nf()")
    assert result.status == "error"
    assert "KeyError: 'missing'" in result.text and "\x1b[" not in result.text


def test_png_is_saved_as_a_file(interp):
    png = tiny_png()
    result = interp.run("from IPython.display import Image, display\n"
                        f"display(Image(data=bytes.fromhex('{png.hex()}')))")
    assert result.status == "ok" and len(result.images) == 1
    path = result.images[0]
    assert path.parent == interp.workdir and path.suffix == ".png"
    assert path.read_bytes() == png


def test_printing_100_mb_is_capped_in_the_kernel(interp):
    import tracemalloc

    size = 100 * 1024 * 1024
    started = time.monotonic()
    tracemalloc.start()
    try:
        result = interp.run(f"print('x' * {size})")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status == "ok"
    assert peak < 10 * 1024 * 1024  # the 100 MB never reached this process
    kept, note = result.text.rsplit("\n", 1)
    assert kept == "x" * interp.output_limit
    assert note == f"… {human_bytes(size + 1 - interp.output_limit)} more not shown"
    # many small writes are counted the same way, and the cap is per run
    lines = interp.run("for i in range(200_000): print(i)")
    expected_total = sum(len(f"{i}\n") for i in range(200_000))
    assert lines.text.startswith("0\n1\n2\n")
    assert lines.text.endswith(f"… {human_bytes(expected_total - interp.output_limit)} more not shown")
    assert time.monotonic() - started < 120


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
def test_endless_loop_is_interrupted_and_the_kernel_kept(interp):
    interp.run("kept = 'still here'")
    result = interp.run("while True: pass", timeout=2)
    assert result.status == "timeout" and result.text == "stopped: no result within 2 s"
    assert not result.kernel_restarted
    assert interp.run("kept").text == "'still here'"


@pytest.mark.slow
def test_a_loop_that_ignores_interrupts_gets_its_kernel_killed(interp):
    interp.run("kept = 1")
    old_pid = interp.pid
    code = ("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "print('ignoring', flush=True)\nwhile True: pass")
    result = interp.run(code, timeout=2)
    assert result.status == "timeout" and result.kernel_restarted
    assert result.text.startswith("ignoring\nstopped: no result within 2 s; the kernel did not stop and was killed")
    assert gone(old_pid) and interp.pid != old_pid
    assert "NameError" in interp.run("kept").text
    assert interp.run("1 + 1").text == "2"


def test_cancel_from_another_thread(interp):
    timer = threading.Timer(1.0, interp.cancel)
    timer.start()
    result = interp.run("import time\nwhile True: time.sleep(0.01)")
    assert result.status == "cancelled" and result.text.startswith("stopped by the user")


def test_a_kernel_that_dies_is_reported_and_replaced(interp):
    old_pid = interp.pid
    result = interp.run("print('bye', flush=True)\nimport os\nos._exit(1)")
    assert result.status == "died" and result.kernel_restarted
    assert "the kernel died (exit code 1)" in result.text
    assert gone(old_pid)
    assert interp.run("print('back')").text == "back"
    assert interp.pid != old_pid


def test_restart_gives_a_new_kernel(interp):
    interp.run("value = 3")
    old_pid = interp.pid
    interp.restart()
    assert gone(old_pid) and interp.alive
    assert "NameError" in interp.run("value").text


def test_shutdown_leaves_no_kernel_or_child_behind(tmp_path):
    ci = CodeInterpreter(tmp_path / "interpreter", timeout=30)
    result = ci.run("import subprocess\np = subprocess.Popen(['sleep', '300'])\np.pid")
    child = int(result.text)
    kernel = ci.pid
    ci.shutdown()
    assert gone(kernel, 10) and gone(child, 10)
    assert not ci.alive


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_kernel_ends_with_the_process_that_started_it(tmp_path, how):
    script = textwrap.dedent(f"""
        import sys, time
        from glmtui.agent.interpreter import CodeInterpreter
        ci = CodeInterpreter({str(tmp_path / 'interpreter')!r})
        ci.start()
        print(ci.pid, flush=True)
        if {how == 'sigkill'!r}:
            time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        kernel = int(parent.stdout.readline())
        assert psutil.pid_exists(kernel)
        if how == "sigkill":
            os.kill(parent.pid, signal.SIGKILL)  # no atexit: ipykernel sees its parent go
        parent.wait(30)
        assert gone(kernel, 20)
    finally:
        if parent.poll() is None:
            parent.kill()
