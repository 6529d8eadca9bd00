"""Downloads against a fake hub on 127.0.0.1 (tests/hubserver.py), with the real
huggingface_hub client for Hugging Face and glmtui's own ModelScope client."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

from glmtui import hub as hubmod
from glmtui.catalog import COMPLETE_MARKER, PARTIAL_DIR, local_status, resolve
from glmtui.hub import (
    AuthRequiredError,
    CorruptFileError,
    DiskFullError,
    DownloadBusyError,
    DownloadCancelled,
    Downloader,
    DownloadError,
    DownloadQueue,
    NetworkError,
    NotEnoughSpaceError,
    NoUsableWeightsError,
    RepoNotFoundError,
    narrow_by_index,
    pull_cli,
    select_files,
)
from glmtui.hub import net as hub_net
from glmtui.hub import transfer as hub_transfer
from helpers import free_port, wait_until
from hubserver import FakeHub, point_hubs_at, repo_extras
from predictor_watch import end_running_predictors, running_predictors, watch_predictor_starts

REPO = "acme/tiny-glm"
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
EXPECTED = sorted([
    "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", *SHARDS,
])
NEVER = ("modeling_x.py", "pytorch_model.bin", "model-old-unused.safetensors", "onnx/model.onnx", "README.md")


@pytest.fixture(autouse=True)
def no_count_left_running():
    """No test here leaves an exact-count process behind (`glmtui pull` starts one, detached: it would outlive
    the test and pytest, niced, counting into a deleted home)."""
    before = frozenset(proc.pid for proc in running_predictors())  # not this test's
    yield
    left = end_running_predictors(keep=before)
    assert not left, f"a background count still ran after the test: {left}"


@pytest.fixture
def background_count(monkeypatch):
    """The counts `glmtui pull` starts as it returns, watched; ended with the test (the count itself is tested
    in tests/engine/test_count_store.py and tests/ui/test_background_counts.py)."""
    before = frozenset(proc.pid for proc in running_predictors())
    starts = watch_predictor_starts(monkeypatch)
    yield starts
    end_running_predictors(keep=before)


@pytest.fixture(scope="session")
def tiny_src(hub_source_model):
    return hub_source_model, repo_extras(hub_source_model)


@pytest.fixture
def hub(tiny_src, monkeypatch, tmp_path):
    src, extras = tiny_src
    with FakeHub() as fake:
        fake.add_folder(REPO, src, extra=extras)
        fake.add_folder("acme/gated-glm", src, gated=True)
        fake.add_folder("acme/private-glm", src, private=True)
        fake.add_repo("acme/gguf-only", {"config.json": b"{}", "model.gguf": b"\0" * 64, "modeling_x.py": b"x"})
        point_hubs_at(fake, monkeypatch, tmp_path)
        yield fake


@pytest.fixture
def models(tmp_path):
    return tmp_path / "models"


@pytest.fixture
def dl(models):
    return Downloader(models, retry_backoff=0.01, progress_interval=0)


def _dest(models):
    return models / "acme--tiny-glm"


def _files_on_disk(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _assert_monotonic(events):
    assert events, "no progress reported"
    for a, b in zip(events, events[1:], strict=False):  # each event with the next
        assert b.bytes_done >= a.bytes_done, (a, b)
        assert b.files_done >= a.files_done, (a, b)
    last = events[-1]
    assert last.phase == "done" and last.bytes_done == last.bytes_total and last.files_done == last.files_total


def _total(hub):
    return hub.total_bytes(REPO, EXPECTED)


def _file_gets(hub):
    return [r for r in hub.file_requests("GET")]


def _requested_files(hub):
    return {r.file for r in hub.requests if r.file is not None}


# ------------------------------------------------------------------ file choice


def test_select_files_prefers_safetensors_and_never_takes_code():
    names = ["config.json", "configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py",
             "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "README.md", ".gitattributes",
             "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
             "generation_config.json", "original/consolidated.safetensors", "qwen.tiktoken", "chat_template.jinja"]
    files, fmt = select_files(names)
    assert fmt == "safetensors"
    assert files == ["chat_template.jinja", "config.json", "generation_config.json", "qwen.tiktoken",
                     "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json",
                     "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"]
    bins, fmt = select_files([n for n in names if "safetensors" not in n])
    assert fmt == "bin" and "pytorch_model.bin.index.json" in bins
    assert not any(n.endswith(".py") or n.endswith(".safetensors") for n in bins)
    with pytest.raises(NoUsableWeightsError):
        select_files(["config.json", "model.gguf", "modeling.py"])


def test_narrow_by_index_drops_stray_shards():
    files = ["config.json", "a.safetensors", "b.safetensors", "stray.safetensors", "model.safetensors.index.json"]
    index = json.dumps({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}).encode()
    assert narrow_by_index(files, "model.safetensors.index.json", index) == [
        "config.json", "a.safetensors", "b.safetensors", "model.safetensors.index.json"]
    with pytest.raises(CorruptFileError):
        narrow_by_index(files, "model.safetensors.index.json", b'{"weight_map": {"x": "c.safetensors"}}')


# ------------------------------------------------------------------ happy path


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_full_download(hub, dl, models, tiny_src, source):
    events = []
    path = dl.download(REPO, source=source, on_progress=events.append)
    assert path == _dest(models)
    _assert_monotonic(events)
    assert events[-1].bytes_total == _total(hub) and events[-1].files_total == len(EXPECTED)
    assert _files_on_disk(path) == sorted(EXPECTED + [COMPLETE_MARKER])
    src, _ = tiny_src
    for name in EXPECTED:
        assert (path / name).read_bytes() == (src / name).read_bytes(), name
    marker = json.loads((path / COMPLETE_MARKER).read_text())
    assert marker["repo"] == REPO and marker["source"] == source and sorted(marker["files"]) == EXPECTED
    st = local_status(resolve(REPO), models)
    assert st.state == "complete" and st.verified and st.path == path

    # only what a load needs: no remote code, no second weight format, no stray shard
    assert _requested_files(hub) == set(EXPECTED)
    assert not any(r.path.endswith((".py", ".bin", ".onnx", "README.md")) for r in hub.requests)
    if source == "hf":
        paths = [r.path for r in hub.requests if r.path.startswith("/api/")]
        assert paths[0] == f"/api/models/{REPO}/revision/main"
        assert paths[1].startswith(f"/api/models/{REPO}/tree/")
        # LFS files come from the "CDN" after the hub's 302, as on huggingface.co
        assert {r.file for r in hub.requests if r.server == "cdn"} == set(SHARDS) | {"tokenizer.json"}
    else:
        assert hub.requests[0].path == f"/api/v1/models/{REPO}/repo/files"
        assert {r.file for r in _file_gets(hub) if r.server == "hub"} == set(EXPECTED)
        assert all(r.path == f"/api/v1/models/{REPO}/repo" for r in _file_gets(hub) if r.server == "hub")


def test_second_download_is_a_no_op_and_an_update_fetches_only_changes(hub, dl, models, tiny_src):
    dl.download(REPO)
    hub.clear_log()
    events = []
    dl.download(REPO, on_progress=events.append)
    assert _file_gets(hub) == [] and events[-1].phase == "done"

    # the repo gets a new commit with a changed config and a file dropped: fetch only that
    src, extras = tiny_src
    files = dict(hub.repos[REPO].files)
    files["config.json"] = files["config.json"].replace(b'"max_position_embeddings": 256',
                                                        b'"max_position_embeddings": 512')
    assert files["config.json"] != hub.repos[REPO].files["config.json"]
    del files["chat_template.jinja"]
    hub.add_repo(REPO, files)
    hub.clear_log()
    path = dl.download(REPO)
    assert [r.file for r in _file_gets(hub)] == ["config.json"]
    assert b'"max_position_embeddings": 512' in (path / "config.json").read_bytes()
    assert not (path / "chat_template.jinja").exists()
    assert local_status(resolve(REPO), models).verified


def test_the_real_huggingface_hub_client_accepts_the_fake_hub(hub, tmp_path):
    """The fake hub's endpoints are the ones huggingface_hub itself calls."""
    from huggingface_hub import snapshot_download

    out = snapshot_download(REPO, local_dir=tmp_path / "snap", allow_patterns=["*.json", "*.safetensors"],
                            ignore_patterns=["model-old-*"], endpoint=hub.url, token=False)
    got = sorted(p.name for p in Path(out).iterdir() if p.is_file())
    assert got == sorted(n for n in EXPECTED if n.endswith((".json", ".safetensors")))


def test_the_real_modelscope_client_accepts_the_fake_hub(hub, tmp_path, monkeypatch):
    pytest.importorskip("modelscope_hub")
    from modelscope_hub.compat.snapshot_download import snapshot_download

    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    out = snapshot_download(REPO, local_dir=str(tmp_path / "ms"), allow_patterns=["*.json"])
    assert sorted(p.name for p in Path(out).iterdir() if p.suffix == ".json") == [
        n for n in EXPECTED if n.endswith(".json")]


# ------------------------------------------------------------------ cancel and resume


def _start(dl, cancel, events, **kw):
    result = {}

    def run():
        try:
            result["path"] = dl.download(REPO, cancel=cancel, on_progress=events.append, **kw)
        except BaseException as e:  # noqa: BLE001 - the test thread hands every outcome to the test
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_cancel_then_resume(hub, dl, models, source):
    hub.slow = (4096, 0.02)  # ~200 kB/s
    cancel = threading.Event()
    events = []
    t, result = _start(dl, cancel, events, source=source)
    wait_until(lambda: events and events[-1].current_file == SHARDS[0] and events[-1].bytes_done > 30_000, 20,
               "30 kB of the first shard", interval=0.01)
    cancel.set()
    cancelled_at = time.monotonic()
    t.join(5)
    assert not t.is_alive()
    assert time.monotonic() - cancelled_at < 1.5, "cancel must stop promptly"
    assert isinstance(result.get("error"), DownloadCancelled)
    dest = _dest(models)
    part = dest / PARTIAL_DIR / (SHARDS[0] + ".part")
    assert part.stat().st_size > 0
    assert not (dest / COMPLETE_MARKER).exists()
    assert local_status(resolve(REPO), models).state == "partial"

    hub.slow = None
    kept = part.stat().st_size
    served_before = hub.bytes_served()
    hub.clear_log()
    resumed = []
    dl.download(REPO, source=source, on_progress=resumed.append)
    _assert_monotonic(resumed)
    assert resumed[1].bytes_done >= kept, "a resumed download starts from what is on disk"
    ranges = [r.range for r in _file_gets(hub) if r.file == SHARDS[0]]
    assert ranges and ranges[0] is not None
    start = int(re.match(r"bytes=(\d+)-", ranges[0]).group(1))
    assert 0 < start <= kept
    assert served_before + hub.bytes_served() < 2 * _total(hub)
    assert local_status(resolve(REPO), models).verified
    assert not (dest / PARTIAL_DIR).exists()


def test_resume_after_a_crash(hub, dl, models):
    """A download process killed with SIGKILL (no cleanup ran) resumes from its partial file."""
    hub.slow = (4096, 0.02)
    dest = _dest(models)
    code = ("import sys; from glmtui.hub import download; "
            f"download({REPO!r}, models_dir={str(models)!r}, token=False)")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part = dest / PARTIAL_DIR / (SHARDS[0] + ".part")
    try:
        wait_until(lambda: part.exists() and part.stat().st_size > 30_000, 60, "the partial file's first 30 kB")
    finally:
        proc.kill()
        proc.wait()
    kept = part.stat().st_size
    hub.slow = None
    hub.clear_log()
    dl.download(REPO)
    first = [r for r in _file_gets(hub) if r.file == SHARDS[0]][0]
    assert first.range is not None and 0 < int(first.range[6:-1]) <= kept
    assert local_status(resolve(REPO), models).verified


def test_a_dropped_connection_resumes_within_the_call(hub, dl, models):
    hub.drops[SHARDS[0]] = [50_000]
    hub.drops[SHARDS[1]] = [10_000, 20_000, 30_000]
    events = []
    dl.download(REPO, on_progress=events.append)
    _assert_monotonic(events)
    r0 = [r.range for r in _file_gets(hub) if r.file == SHARDS[0]]
    assert r0 == [None, "bytes=50000-"]
    r1 = [r.range for r in _file_gets(hub) if r.file == SHARDS[1]]
    assert r1 == [None, "bytes=10000-", "bytes=30000-", "bytes=60000-"]
    assert hub.bytes_served() == _total(hub)  # nothing was fetched twice
    assert local_status(resolve(REPO), models).verified


def test_a_link_that_keeps_failing_gives_up_keeps_the_part_and_resumes_later(hub, models):
    dl = Downloader(models, retry_backoff=0.01, max_retries=2)
    hub.drops[SHARDS[0]] = [60_000, 0, 0, 0, 0]
    with pytest.raises(NetworkError, match="kept"):
        dl.download(REPO)
    part = _dest(models) / PARTIAL_DIR / (SHARDS[0] + ".part")
    assert part.stat().st_size == 60_000
    hub.drops.clear()
    hub.clear_log()
    dl.download(REPO)
    assert [r.range for r in _file_gets(hub) if r.file == SHARDS[0]] == ["bytes=60000-"]
    assert local_status(resolve(REPO), models).verified


def test_a_server_that_ignores_range_still_gives_a_correct_file(hub, dl, models):
    hub.ignore_range = True
    hub.drops[SHARDS[0]] = [50_000]
    events = []
    path = dl.download(REPO, on_progress=events.append)
    _assert_monotonic(events)
    statuses = [r.status for r in _file_gets(hub) if r.file == SHARDS[0]]
    assert statuses == [200, 200]
    assert hashlib.sha256((path / SHARDS[0]).read_bytes()).hexdigest() == \
        hashlib.sha256(hub.repos[REPO].files[SHARDS[0]]).hexdigest()


# ------------------------------------------------------------------ errors


def test_unknown_repo_is_a_clear_error(hub, dl, models):
    with pytest.raises(RepoNotFoundError, match=r"acme/nope .*not found"):
        dl.download("acme/nope")
    with pytest.raises(RepoNotFoundError, match="acme/nope"):
        dl.download("acme/nope", source="modelscope")
    assert not models.exists()


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_gated_repo_needs_a_token(hub, dl, models, source):
    with pytest.raises(AuthRequiredError, match="token") as err:
        dl.download("acme/gated-glm", source=source)
    assert "HF_TOKEN" in str(err.value) if source == "hf" else "MODELSCOPE_API_TOKEN" in str(err.value)
    assert not (models / "acme--gated-glm" / COMPLETE_MARKER).exists()

    with pytest.raises(AuthRequiredError, match="token"):
        Downloader(models, token="hf_wrong").download("acme/gated-glm", source=source)

    hub.clear_log()
    path = Downloader(models, token="hf_test_token").download("acme/gated-glm", source=source)
    assert (path / COMPLETE_MARKER).exists()
    assert all(r.authorization == "Bearer hf_test_token" for r in hub.requests if r.server == "hub")
    cdn = [r for r in hub.requests if r.server == "cdn"]
    assert cdn and all(r.authorization is None and r.cookie is None for r in cdn), "token leaked to the CDN"


def test_private_repo_without_token(hub, dl):
    with pytest.raises(AuthRequiredError, match="token"):
        dl.download("acme/private-glm")


def test_no_network_is_a_clear_error(hub, dl, monkeypatch, models):
    port = free_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{port}")
    for source in ("hf", "modelscope"):
        with pytest.raises(NetworkError, match="cannot reach .*connection refused"):
            dl.download(REPO, source=source)
    assert not models.exists()


# ------------------------------------------------------------------ endpoints: the default path, no network


@pytest.fixture
def hub_via_config(tiny_src, monkeypatch, tmp_path):
    """The fake hub named in config.toml's [hub] table: no HF_ENDPOINT, huggingface_hub's constants untouched."""
    src, extras = tiny_src
    with FakeHub() as fake:
        fake.add_folder(REPO, src, extra=extras)
        point_hubs_at(fake, monkeypatch, tmp_path, via="config")
        yield fake


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_download_with_no_endpoint_variable(hub_via_config, models, source):
    """The path of a user who never set HF_ENDPOINT: endpoint from config.toml, every call made with it."""
    import huggingface_hub.constants as hfc

    assert "HF_ENDPOINT" not in os.environ and "MODELSCOPE_ENDPOINT" not in os.environ
    assert hfc.ENDPOINT != hub_via_config.url  # a call that fell back on huggingface_hub's own endpoint would fail
    path = Downloader(models, retry_backoff=0.01).download(REPO, source=source)
    assert local_status(resolve(REPO), models).verified
    assert json.loads((path / COMPLETE_MARKER).read_text())["endpoint"] == hub_via_config.url
    assert _requested_files(hub_via_config) == set(EXPECTED)


def test_pull_cli_and_queue_with_no_endpoint_variable(hub_via_config, models, tmp_path, capsys, background_count):
    assert pull_cli([REPO, "--models-dir", str(models)]) == 0
    assert "ready" in capsys.readouterr().err
    assert [s.low_priority for s in background_count] == [True]
    q = DownloadQueue(Downloader(tmp_path / "queue-models", retry_backoff=0.01))
    try:
        job = q.submit(REPO)
        assert q.wait(60)
        assert q.get(job.id).state == "done", q.get(job.id).error
    finally:
        q.close()


def test_endpoint_precedence(hub_via_config, monkeypatch):
    """argument > HF_ENDPOINT > [hub] in config.toml > huggingface_hub's default; a bad value is named."""
    from glmtui.config import default_paths

    url = hub_via_config.url
    assert Downloader().endpoint("hf")[0] == url
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1/")
    assert Downloader().endpoint("hf")[0] == "http://127.0.0.1:1"
    assert Downloader(hf_endpoint="https://mirror.example").endpoint("hf")[0] == "https://mirror.example"
    monkeypatch.delenv("HF_ENDPOINT")
    config = default_paths().config_file
    config.write_text('[hub]\nhf_endpoint = "hf-mirror.com"\n')
    with pytest.raises(DownloadError, match=r"hf_endpoint under \[hub\] in .*config.toml is not an http\(s\) URL"):
        Downloader().endpoint("hf")
    config.unlink()
    endpoint, hint = Downloader().endpoint("hf")
    assert endpoint == "https://huggingface.co" and "HF_ENDPOINT" in hint and "[hub]" in hint
    assert Downloader().endpoint("modelscope")[0] == "https://modelscope.cn"


def _pull_subprocess(tmp_path, *args, proxy=None):
    """``glmtui pull`` in a fresh process with no endpoint variable, fresh homes and (optionally)
    every proxy variable pointing at ``proxy``; returns (exit code, stderr lines, seconds)."""
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in ("HF_ENDPOINT", "MODELSCOPE_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "NO_PROXY",
                                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), GLMTUI_HOME=str(tmp_path / "glmtui-home"), COLUMNS="80")
    if proxy:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[var] = env[var.lower()] = proxy
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "glmtui.cli", "pull", *args], capture_output=True, text=True,
                         env=env, timeout=120)
    return out.returncode, [ln for ln in out.stderr.splitlines() if ln.strip()], time.monotonic() - t0


@pytest.mark.slow
def test_pull_with_no_network_fails_fast_with_one_line(tmp_path):
    """The blocker: `glmtui pull chatglm3-6b` with HF_ENDPOINT unset, huggingface.co unreachable.
    The network is taken away with a proxy on a closed 127.0.0.1 port, so this never leaves the machine."""
    proxy = f"http://127.0.0.1:{free_port()}"
    for args, host in ((["chatglm3-6b"], "https://huggingface.co"),
                       (["chatglm3-6b", "--source", "modelscope"], "https://modelscope.cn")):
        rc, lines, seconds = _pull_subprocess(tmp_path, *args, proxy=proxy)
        assert rc == 1, lines
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"error: cannot reach {host}: connection refused; check the network"), lines
        other = "--source modelscope" if host.endswith("huggingface.co") else "--source hf"
        assert lines[0].endswith(f"or download it from {'ModelScope' if 'modelscope' in other else 'Hugging Face'}: "
                                 f"glmtui pull chatglm3-6b {other}"), lines
        assert seconds < 60, seconds  # a few seconds unloaded; generous for a busy machine
    assert not (tmp_path / "glmtui-home" / "data" / "models").exists()


@pytest.mark.slow
def test_pull_with_no_dns_fails_fast_with_one_line(tmp_path):
    """The true default, as a user without network meets it: huggingface.co does not resolve."""
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        pass
    else:
        pytest.skip("huggingface.co resolves here: this test is for a machine without network")
    rc, lines, seconds = _pull_subprocess(tmp_path, "chatglm3-6b")
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: cannot reach https://huggingface.co: the name huggingface.co does not resolve")
    assert seconds < 60, seconds


def test_pull_endpoint_option_and_config_key(tmp_path, capsys, monkeypatch):
    """--endpoint and [hub] hf_endpoint both reach the backend (here: a closed port), named in the one error line."""
    from glmtui.cli import main
    from glmtui.config import default_paths

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["pull", "chatglm3-6b", "--endpoint", url]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"error: cannot reach {url}: connection refused; check the network and the endpoint argument "
                   "(--endpoint) — or download it from ModelScope: glmtui pull chatglm3-6b --source modelscope")
    config = default_paths().config_file
    config.parent.mkdir(parents=True)
    config.write_text(f'[hub]\nhf_endpoint = "{url}"\n')
    assert main(["pull", "chatglm3-6b"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot reach {url}: connection refused; check the network and hf_endpoint under "
                          f"[hub] in {config}") and "\n" not in err


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
def test_connect_timeout_is_bounded(monkeypatch, models):
    """A hub whose connections are never accepted (a full listen backlog on 127.0.0.1) fails within the
    connect timeout instead of hanging."""
    monkeypatch.setattr(hub_net, "CONNECT_TIMEOUT", 1.0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):  # fill the backlog: further SYNs are dropped
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", port))
                fillers.append(c)
            time.sleep(0.2)
            for source in ("hf", "modelscope"):
                t0 = time.monotonic()
                with pytest.raises(NetworkError, match=r"cannot reach http://127\.0\.0\.1:\d+: no answer within 1 s"):
                    Downloader(models, hf_endpoint=f"http://127.0.0.1:{port}",
                               modelscope_endpoint=f"http://127.0.0.1:{port}").download("acme/x", source=source)
                assert time.monotonic() - t0 < 15
        finally:
            for c in fillers:
                c.close()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_a_listing_that_stalls_fails_within_the_read_timeout(hub, dl, monkeypatch, source):
    """A hub that takes the listing request and then never answers: one line after the read timeout,
    not a download that hangs (huggingface_hub's list_repo_tree passes no timeout at all)."""
    from huggingface_hub import constants

    monkeypatch.setattr(hub_net, "READ_TIMEOUT", 3.0)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 3.0)  # HF reads the larger of the two
    hub.stall_listing = 60.0
    t0 = time.monotonic()
    with pytest.raises(NetworkError) as err:
        dl.download(REPO, source=source)
    assert time.monotonic() - t0 < 30
    message = str(err.value)
    assert message.startswith(f"{hub.url} stopped answering (") and "\n" not in message
    assert not (_dest(dl.models_dir)).exists()


def test_a_paged_listing_is_read_to_the_end(hub, dl, models):
    """The hub pages a long tree listing (Link: rel="next"); glmtui reads every page."""
    hub.tree_page_size = 2
    dl.download(REPO)
    assert local_status(resolve(REPO), models).verified
    pages = [r for r in hub.requests if "/tree/" in r.path]
    assert len(pages) == -(-len(hub.repos[REPO].files) // 2)
    assert all(r.query.get("recursive") == "true" for r in pages)


def test_repo_without_loadable_weights(hub, dl):
    with pytest.raises(NoUsableWeightsError, match="gguf-only"):
        dl.download("acme/gguf-only")


Usage = namedtuple("Usage", "total used free")


def test_not_enough_disk_space_is_refused_before_anything_is_written(hub, dl, models, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(NotEnoughSpaceError, match=r"needs [\d.]+ [kMG]?B, [\d.]+ [kMG]?B free"):
        dl.download(REPO)
    assert not models.exists()
    assert not any(r.file in SHARDS for r in hub.requests)


def test_space_check_counts_what_is_already_downloaded(hub, dl, models, monkeypatch):
    hub.drops[SHARDS[1]] = [0] * 10
    with pytest.raises(NetworkError):
        Downloader(models, retry_backoff=0.001, max_retries=1).download(REPO)
    hub.drops.clear()
    plan = dl.plan(REPO)
    assert 0 < plan.needed_bytes < plan.total_bytes == _total(hub)
    free = {"n": plan.needed_bytes - 1}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 0, free["n"]))
    with pytest.raises(NotEnoughSpaceError, match="more"):
        dl.download(REPO)
    free["n"] = plan.needed_bytes + 1  # less than the whole model, enough for the rest
    assert free["n"] < plan.total_bytes
    dl.download(REPO)
    assert local_status(resolve(REPO), models).verified


@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_corrupt_file_is_removed_and_the_rest_kept(hub, dl, models, source):
    hub.corrupt.add(SHARDS[1])
    with pytest.raises(CorruptFileError) as err:
        dl.download(REPO, source=source)
    assert err.value.files == (SHARDS[1],)
    assert SHARDS[1] in str(err.value) and "sha256" in str(err.value)
    dest = _dest(models)
    assert not (dest / SHARDS[1]).exists()
    assert not (dest / PARTIAL_DIR / (SHARDS[1] + ".part")).exists()
    assert (dest / SHARDS[0]).exists() and (dest / SHARDS[2]).exists()
    assert not (dest / COMPLETE_MARKER).exists()
    assert local_status(resolve(REPO), models).state == "partial"

    hub.corrupt.clear()
    hub.clear_log()
    dl.download(REPO, source=source)
    assert {r.file for r in _file_gets(hub)} == {SHARDS[1]}
    assert local_status(resolve(REPO), models).verified


def test_disk_full_while_writing_keeps_the_partial_file(hub, dl, models, monkeypatch):
    """ENOSPC in the middle of a shard: a clear error, and the bytes written so far are resumed from."""
    real_open = open
    full = {"on": True}

    class FillingUp:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            room = 40_000 - self.f.tell()
            if full["on"] and len(data) > room:
                self.f.write(data[:room])  # the disk takes what fits, then fails
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return FillingUp(f) if str(path).endswith(SHARDS[0] + ".part") and "a" in mode else f

    monkeypatch.setattr(hub_transfer, "open", fake_open, raising=False)  # where the .part files are written
    with pytest.raises(DiskFullError, match="full"):
        dl.download(REPO)
    part = _dest(models) / PARTIAL_DIR / (SHARDS[0] + ".part")
    kept = part.stat().st_size
    assert 0 < kept <= 40_000
    full["on"] = False
    hub.clear_log()
    dl.download(REPO)
    assert [r.range for r in _file_gets(hub) if r.file == SHARDS[0]] == [f"bytes={kept}-"]
    assert local_status(resolve(REPO), models).verified


def test_two_downloads_into_one_folder_are_refused(hub, dl, models):
    hub.slow = (4096, 0.02)
    cancel = threading.Event()
    events = []
    t, result = _start(dl, cancel, events)
    assert wait_until(lambda: any(e.bytes_done > 0 for e in events))
    try:
        with pytest.raises(DownloadBusyError, match="already being downloaded"):
            Downloader(models).download(REPO)
    finally:
        cancel.set()
        t.join(5)
    assert isinstance(result["error"], DownloadCancelled)


# ------------------------------------------------------------------ queue, cli, load


def test_queue_runs_downloads_one_after_another(hub, models, tmp_path):
    updates = []
    q = DownloadQueue(Downloader(models, retry_backoff=0.01), on_update=updates.append)
    try:
        j1 = q.submit(REPO)
        j2 = q.submit(REPO, source="modelscope", dest_dir=tmp_path / "ms-copy")
        assert q.submit(REPO).id == j1.id  # not queued twice
        assert q.wait(60)
        jobs = {j.id: j for j in q.jobs()}
        assert jobs[j1.id].state == "done" and jobs[j2.id].state == "done"
        assert jobs[j2.id].path == tmp_path / "ms-copy"
        order = [(u.id, u.state) for u in updates if u.state in ("running", "done")]
        assert order.index((j1.id, "done")) < order.index((j2.id, "running"))
        assert any(u.progress is not None and u.progress.phase == "downloading" for u in updates)

        # cancel a running job and a queued one
        hub.slow = (4096, 0.02)
        j3 = q.submit("acme/gated-glm")  # fails: no token
        j4 = q.submit(REPO, dest_dir=tmp_path / "slow")
        j5 = q.submit(REPO, dest_dir=tmp_path / "never")
        assert q.cancel(j5.id)
        none = hubmod.DownloadProgress(0, 0, 0, None, None, 0, 0)
        wait_until(lambda: (q.get(j4.id).progress or none).bytes_done > 0, 20, "the slow job's first bytes")
        assert q.cancel(j4.id)
        assert q.wait(10)
        assert q.get(j3.id).state == "failed" and q.get(j3.id).error_type == "AuthRequiredError"
        assert q.get(j4.id).state == "cancelled" and q.get(j5.id).state == "cancelled"
        assert not (tmp_path / "never").exists()
        assert not q.cancel(j1.id)
    finally:
        q.close()


def test_pull_cli(hub, models, capsys, background_count):
    assert pull_cli([REPO, "--models-dir", str(models)]) == 0
    assert "ready" in capsys.readouterr().err
    assert [s.low_priority for s in background_count] == [True]  # pull returned; its count runs on
    assert local_status(resolve(REPO), models).verified
    assert pull_cli(["acme/nope", "--models-dir", str(models)]) == 1
    assert "not found" in capsys.readouterr().err
    assert pull_cli(["not a model", "--models-dir", str(models)]) == 2


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
def test_downloaded_model_loads_and_generates(hub, dl):
    path = dl.download(REPO)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from glmtui.engine.loading import load_model
    except ImportError:
        load_model = None
    tok = AutoTokenizer.from_pretrained(path)
    if load_model is not None:
        loaded = load_model(path, mode="fp32", device="cpu")
        model = loaded.model
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    enc = tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(enc["input_ids"], max_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4


def test_local_folder_and_bad_specs_are_not_downloaded(hub, dl, tmp_path):
    with pytest.raises(DownloadError, match="local folder"):
        dl.download(str(tmp_path))
    with pytest.raises(DownloadError, match="unknown model"):
        dl.download("not a model")
    with pytest.raises(DownloadError, match="ModelScope"):
        dl.download(resolve("someone/x"), source="modelscope")
