"""The other source suggested after a failed download, for the real catalogue and the hub's own errors."""

from __future__ import annotations

from glmtui import catalog
from glmtui.hub.errors import AuthRequiredError, DiskFullError, DownloadCancelled, NetworkError, RepoNotFoundError
from glmtui.mirrors import other_source_hint


def test_a_catalogue_model_that_failed_on_one_hub_points_at_the_other():
    entry = catalog.get("chatglm3-6b")
    hint = other_source_hint(entry, "hf", NetworkError("huggingface.co: the name does not resolve"))
    assert hint == " — or download it from ModelScope: glmtui pull chatglm3-6b --source modelscope"
    back = other_source_hint(entry, "modelscope", RepoNotFoundError("not there"))
    assert back == " — or download it from Hugging Face: glmtui pull chatglm3-6b --source hf"
    assert "s in Models" in other_source_hint(entry, "hf", AuthRequiredError("gated"), ui=True)


def test_no_hint_where_the_other_hub_cannot_help():
    entry = catalog.get("glm-4-9b-chat")
    for error in (DiskFullError("disk full"), DownloadCancelled("cancelled"), ValueError("a bug")):
        assert other_source_hint(entry, "hf", error) == ""
    only_hf = catalog.resolve("someone/some-glm", source="hf")  # a hub id: on one hub only
    assert other_source_hint(only_hf, "hf", NetworkError("x")) == ""
    only_ms = catalog.resolve("someone/some-glm", source="modelscope")
    assert other_source_hint(only_ms, "modelscope", NetworkError("x")) == ""


def test_pull_downloads_from_the_source_the_tui_remembered(monkeypatch, tmp_path):
    from glmtui.cli import main
    from glmtui.config import default_paths
    from hubserver import FakeHub, point_hubs_at

    config = default_paths().config_file
    config.parent.mkdir(parents=True)
    config.write_text('[ui]\ndownload_source = "modelscope"\n')
    with FakeHub() as hub:
        point_hubs_at(hub, monkeypatch, tmp_path, via="env")
        assert main(["pull", "someorg/not-there"]) == 1
        assert hub.requests and all(r.path.startswith("/api/v1/models/someorg/not-there") for r in hub.requests)
        hub.clear_log()
        assert main(["pull", "someorg/not-there", "--source", "hf"]) == 1  # the flag still wins
        assert hub.requests and not any(r.path.startswith("/api/v1/") for r in hub.requests)


def test_a_failed_jobs_error_class_name_decides_the_hint_too():
    """The download queue keeps an error's class name (DownloadJob.error_type): the TUI's hint reads that."""
    entry = catalog.get("chatglm3-6b")
    assert "switch to ModelScope (s in Models)" in other_source_hint(entry, "hf", "NetworkError", ui=True)
    assert "switch to Hugging Face" in other_source_hint(entry, "modelscope", "RepoNotFoundError", ui=True)
    for name in ("DiskFullError", "NotEnoughSpaceError", "DownloadCancelled", "ValueError", "NoSuchThing"):
        assert other_source_hint(entry, "hf", name, ui=True) == "", name


def test_which_endpoint_each_source_uses_and_who_set_it(tmp_path):
    from glmtui.mirrors import endpoint_in_use, endpoint_problem
    from glmtui.ui.prefs import save_table

    config = tmp_path / "config.toml"
    config.write_text('[ui]\ntheme = "glm-ink"\n\n[web]\ntoken = "t"\n', encoding="utf-8")
    hf = endpoint_in_use("hf", config, environ={})
    assert (hf.url, hf.set_by, hf.saved) == ("https://huggingface.co", "", "")
    assert hf.label == "Hugging Face https://huggingface.co"
    save_table(config, "hub", {"hf_endpoint": "https://hf-mirror.com/", "modelscope_endpoint": None})
    hf = endpoint_in_use("hf", config, environ={})
    assert (hf.url, hf.set_by, hf.saved) == ("https://hf-mirror.com", "config.toml", "https://hf-mirror.com")
    assert endpoint_in_use("modelscope", config, environ={}).url == "https://modelscope.cn"
    env = endpoint_in_use("hf", config, environ={"HF_ENDPOINT": "http://10.0.0.2:8080"})
    assert (env.url, env.set_by, env.saved) == ("http://10.0.0.2:8080", "HF_ENDPOINT", "https://hf-mirror.com")
    assert env.label == "Hugging Face http://10.0.0.2:8080 (HF_ENDPOINT)"
    ms = endpoint_in_use("modelscope", config, environ={"MODELSCOPE_ENDPOINT": "https://ms.example"})
    assert ms.label == "ModelScope https://ms.example (MODELSCOPE_ENDPOINT)"
    text = config.read_text(encoding="utf-8")
    assert '[ui]\ntheme = "glm-ink"' in text and '[web]\ntoken = "t"' in text  # other tables kept
    save_table(config, "hub", {"hf_endpoint": None})  # removed: the public hub again
    assert endpoint_in_use("hf", config, environ={}).set_by == ""
    assert endpoint_problem("") is None and endpoint_problem("https://hf-mirror.com") is None
    assert "not an http(s) URL" in endpoint_problem("hf-mirror.com")
    assert "not an http(s) URL" in endpoint_problem("ftp://hf-mirror.com")
