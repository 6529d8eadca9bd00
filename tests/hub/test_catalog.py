"""The model catalogue: resolving what the user typed, and what is on disk."""

from __future__ import annotations

import json
import re
from dataclasses import FrozenInstanceError

import pytest

from glmtui import catalog
from glmtui.catalog import (
    COMPLETE_MARKER,
    PARTIAL_DIR,
    CatalogEntry,
    UnknownModelError,
    local_status,
    resolve,
)


def test_catalogue_entries_are_well_formed():
    keys = [e.key for e in catalog.CATALOG]
    assert len(keys) == len(set(keys))
    assert {"chatglm3-6b", "chatglm3-6b-base", "chatglm3-6b-32k", "glm-4-9b-chat", "glm-4-9b-0414",
            "glm-edge-1.5b-chat", "glm-edge-4b-chat"} <= set(keys)
    for e in catalog.CATALOG:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", e.hf_repo)
        assert e.modelscope_repo is None or re.fullmatch(r"[\w.-]+/[\w.-]+", e.modelscope_repo)
        assert e.prompt_format in ("chatglm3", "chat_template")
        assert e.params_b > 0 and e.download_bytes > 1e9 and e.context_length >= 2048
        assert e.in_catalog and e.local_path is None
        assert e.dirname == e.hf_repo.replace("/", "--")
    assert catalog.get("chatglm3-6b").hf_repo == "THUDM/chatglm3-6b"
    assert catalog.get("chatglm3-6b").modelscope_repo == "ZhipuAI/chatglm3-6b"
    assert catalog.get("glm-4-9b-chat").hf_repo == "THUDM/glm-4-9b-chat-hf"
    assert catalog.get("chatglm3-6b-32k").context_length == 32768
    assert not catalog.get("chatglm3-6b-base").chat
    with pytest.raises(FrozenInstanceError):
        catalog.get("chatglm3-6b").key = "x"  # type: ignore[misc]  # frozen: the test writes anyway


def test_resolve_catalogue_keys_case_insensitively():
    assert resolve("chatglm3-6b") is catalog.get("chatglm3-6b")
    assert resolve("  GLM-Edge-1.5B-Chat ") is catalog.get("glm-edge-1.5b-chat")


def test_resolve_hub_ids_to_catalogue_entries():
    assert resolve("THUDM/chatglm3-6b") is catalog.get("chatglm3-6b")
    assert resolve("thudm/GLM-4-9B-0414") is catalog.get("glm-4-9b-0414")
    assert resolve("ZhipuAI/chatglm3-6b-32k", source="modelscope") is catalog.get("chatglm3-6b-32k")


def test_resolve_unknown_hub_id_makes_an_ad_hoc_entry():
    e = resolve("someone/my-glm-finetune")
    assert isinstance(e, CatalogEntry) and not e.in_catalog
    assert e.hf_repo == "someone/my-glm-finetune" and e.modelscope_repo is None
    assert e.dirname == "someone--my-glm-finetune"
    assert e.repo_for("hf") == "someone/my-glm-finetune"
    with pytest.raises(ValueError, match="ModelScope"):
        e.repo_for("modelscope")
    ms = resolve("someone/chatglm3-custom", source="modelscope")
    assert ms.modelscope_repo == "someone/chatglm3-custom" and ms.hf_repo is None
    assert ms.prompt_format == "chatglm3"
    assert ms.dirname == "someone--chatglm3-custom"


def _write_model_folder(folder, *, chat_template=True, shards=("model-1.safetensors", "model-2.safetensors"),
                        present=None, model_type="glm"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "max_position_embeddings": 4096}))
    (folder / "tokenizer.json").write_text("{}")
    if chat_template:
        (folder / "chat_template.jinja").write_text("{{ messages }}")
    weight_map = {f"w{i}": s for i, s in enumerate(shards)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for s in shards if present is None else present:
        (folder / s).write_bytes(b"\0" * 16)
    return folder


def test_resolve_local_folders(tmp_path, monkeypatch):
    folder = _write_model_folder(tmp_path / "My-Model")
    e = resolve(str(folder))
    assert e.local_path == folder.resolve() and e.name == "My-Model"
    assert e.prompt_format == "chat_template" and e.context_length == 4096
    # a ChatGLM3 folder: SentencePiece tokenizer, no chat template
    glm3 = _write_model_folder(tmp_path / "glm3", chat_template=False, model_type="chatglm")
    (glm3 / "tokenizer.model").write_bytes(b"x")
    assert resolve(str(glm3)).prompt_format == "chatglm3"
    assert resolve(str(glm3)).family == "chatglm3"
    # relative paths, and an existing folder that looks like a hub id wins (as in from_pretrained)
    monkeypatch.chdir(tmp_path)
    assert resolve("./My-Model").local_path == folder.resolve()
    _write_model_folder(tmp_path / "THUDM" / "chatglm3-6b")
    local = resolve("THUDM/chatglm3-6b")
    assert local.local_path == (tmp_path / "THUDM" / "chatglm3-6b").resolve()


def test_resolve_errors():
    with pytest.raises(UnknownModelError, match="no such model folder"):
        resolve("./definitely-not-here")
    with pytest.raises(UnknownModelError, match="chatglm3-6b"):
        resolve("chatglm3-6")
    with pytest.raises(UnknownModelError):
        resolve("")


def test_local_status_absent_partial_complete(tmp_path):
    models = tmp_path / "models"
    entry = catalog.get("glm-edge-1.5b-chat")
    st = local_status(entry, models)
    assert st.state == "absent" and not st.present and st.path is None

    folder = models / "THUDM--glm-edge-1.5b-chat"
    (folder / PARTIAL_DIR).mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / PARTIAL_DIR / "model.safetensors.part").write_bytes(b"\0" * 100)
    st = local_status(entry, models)
    assert st.state == "partial" and st.present and not st.complete and not st.verified
    assert st.path == folder and st.size_bytes == 102

    # what the downloader leaves when done: the files, the marker, no partial dir
    (folder / PARTIAL_DIR / "model.safetensors.part").rename(folder / "model.safetensors")
    (folder / PARTIAL_DIR).rmdir()
    (folder / COMPLETE_MARKER).write_text(json.dumps({
        "repo": entry.hf_repo, "source": "hf",
        "files": {"config.json": {"size": 2}, "model.safetensors": {"size": 100}},
    }))
    st = local_status(entry, models)
    assert st.state == "complete" and st.complete and st.verified and st.path == folder

    # a file changed size after the download: no longer complete
    (folder / "model.safetensors").write_bytes(b"\0" * 99)
    st = local_status(entry, models)
    assert st.state == "partial" and st.missing == ("model.safetensors",)

    # the folder resolves back to its catalogue entry through the marker
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    e = resolve(str(folder))
    assert e.key == entry.key and e.local_path == folder.resolve()
    assert local_status(e, models).verified


def test_local_status_of_a_users_own_folder(tmp_path):
    folder = _write_model_folder(tmp_path / "mine")
    st = local_status(resolve(str(folder)), tmp_path / "models")
    assert st.state == "complete" and not st.verified and st.path == folder.resolve()
    broken = _write_model_folder(tmp_path / "broken", present=("model-1.safetensors",))
    st = local_status(resolve(str(broken)), tmp_path / "models")
    assert st.state == "partial" and st.missing == ("model-2.safetensors",)


def test_print_catalog_lists_keys_and_disk_state(tmp_path, capsys):
    folder = tmp_path / "models" / "THUDM--glm-edge-1.5b-chat"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / COMPLETE_MARKER).write_text(json.dumps({"repo": "THUDM/glm-edge-1.5b-chat",
                                                      "files": {"config.json": {"size": 2}}}))
    assert catalog.print_catalog(tmp_path / "models") == 0
    out = capsys.readouterr().out
    for e in catalog.CATALOG:
        assert e.key in out
    assert "ready" in out


NEW_GLM = {  # key: (HF id, ModelScope id, transformers class)
    "glm-z1-9b-0414": ("zai-org/GLM-Z1-9B-0414", "ZhipuAI/GLM-Z1-9B-0414", "Glm4ForCausalLM"),
    "glm-4-32b-0414": ("zai-org/GLM-4-32B-0414", "ZhipuAI/GLM-4-32B-0414", "Glm4ForCausalLM"),
    "glm-z1-32b-0414": ("zai-org/GLM-Z1-32B-0414", "ZhipuAI/GLM-Z1-32B-0414", "Glm4ForCausalLM"),
    "glm-4.7-flash": ("zai-org/GLM-4.7-Flash", "ZhipuAI/GLM-4.7-Flash", "Glm4MoeLiteForCausalLM"),
    "glm-4.5-air": ("zai-org/GLM-4.5-Air", "ZhipuAI/GLM-4.5-Air", "Glm4MoeForCausalLM"),
}


def test_newer_glm_family_in_the_catalogue():
    transformers = pytest.importorskip("transformers")
    for key, (hf, ms, arch) in NEW_GLM.items():
        e = catalog.get(key)
        assert (e.hf_repo, e.modelscope_repo, e.architecture) == (hf, ms, arch)
        assert hasattr(transformers, e.architecture)  # loads natively, no remote code
        assert e.notes and "\n" not in e.notes and len(e.notes) < 200
        assert e.dirname == hf.replace("/", "--")
        # the old org's id and the ModelScope id resolve to the same entry
        assert resolve("THUDM/" + hf.split("/")[1]) is e
        assert resolve(hf.lower()) is e and resolve(ms, source="modelscope") is e
    assert "needs ≥ 60 GB at 4-bit" in catalog.get("glm-4.5-air").notes
    assert catalog.get("glm-z1-9b-0414").reasoning and not catalog.get("glm-4-32b-0414").reasoning
    # the older entries answer to their zai-org ids too
    assert resolve("zai-org/chatglm3-6b") is catalog.get("chatglm3-6b")
    assert resolve("zai-org/GLM-4-9B-0414") is catalog.get("glm-4-9b-0414")


def test_catalogue_parameters_match_the_exact_count():
    """params_b of the new entries is what transformers builds from their shapes (meta device)."""
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    shapes = {
        "glm-z1-9b-0414": {"model_type": "glm4", "vocab_size": 151552, "hidden_size": 4096,
                           "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 32,
                           "num_key_value_heads": 2, "head_dim": 128, "attention_bias": True},
        "glm-4-32b-0414": {"model_type": "glm4", "vocab_size": 151552, "hidden_size": 6144,
                           "intermediate_size": 23040, "num_hidden_layers": 61, "num_attention_heads": 48,
                           "num_key_value_heads": 2, "head_dim": 128, "attention_bias": True},
        "glm-4.7-flash": {"model_type": "glm4_moe_lite"},  # transformers' defaults are GLM-4.7-Flash's
        "glm-4.5-air": {"model_type": "glm4_moe"},  # and GLM-4.5-Air's
    }
    for key, cfg in shapes.items():
        params = predict.predict_config(cfg, ("bf16",), device="cpu")["bf16"].params
        assert abs(params / 1e9 - catalog.get(key).params_b) < 0.01, (key, params)


@pytest.mark.parametrize("where, kind", [
    ("chatglm3-6b-base", "base"),  # git clone / --local-dir
    ("ChatGLM3-6B-Base", "base"),
    ("hub/models--THUDM--chatglm3-6b-base/snapshots/0123abcd", "base"),  # the Hugging Face cache
    ("hub/models--zai-org--chatglm3-6b-base/snapshots/0123abcd", "base"),
    ("ZhipuAI--chatglm3-6b-base", "base"),
    ("chatglm3-6b", "chat"),
    ("hub/models--THUDM--chatglm3-6b/snapshots/0123abcd", "chat"),
    ("my-chatglm3-6b-base-sft", "chat"),  # only the base model's own name counts
])
def test_a_base_model_downloaded_elsewhere_is_known_by_its_name(tmp_path, where, kind):
    """ChatGLM3-6B-Base fetched without glmtui (no marker) still opens in completion mode (issue 19)."""
    folder = tmp_path / where
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "chatglm"}))
    assert catalog.entry_for_folder(folder).kind == kind
