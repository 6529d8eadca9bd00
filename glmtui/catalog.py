"""Known models, and where a model lives on disk.
Kept whole past 400 lines: one table of models and the lookups that read it.

No UI, no torch: this module is imported by the CLI, the UI and the engine.

A downloaded model lives in ``<models_dir>/<org>--<name>/`` (``org/name`` is the
Hugging Face id when the model has one).  It is usable only once the downloader
has verified every file and written :data:`COMPLETE_MARKER` (a JSON list of the
files with their sizes and hashes).  While a download runs, or after it was
cancelled or crashed, the folder holds :data:`PARTIAL_DIR` with the unfinished
files: :func:`local_status` reports such a folder as ``partial``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional

PromptFormat = Literal["chatglm3", "chat_template"]

#: Written into a model folder when every file is downloaded and verified.
COMPLETE_MARKER = ".glmtui-complete"
#: Holds the unfinished files (``*.part``) and the download state while downloading.
PARTIAL_DIR = ".glmtui-partial"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

GB = 1_000_000_000


@dataclass(frozen=True)
class CatalogEntry:
    """One model: where to fetch it from and what it is.

    Figures (``params_b``, ``download_bytes``, ``context_length``) are ``None`` for
    models that are not in the catalogue (a hub id or a folder the user named).
    """

    key: str
    name: str
    family: str
    hf_repo: Optional[str]
    modelscope_repo: Optional[str] = None
    params_b: Optional[float] = None
    download_bytes: Optional[int] = None
    context_length: Optional[int] = None
    prompt_format: PromptFormat = "chat_template"
    chat: bool = True
    notes: str = ""
    #: Set for a model the user pointed at on disk (not downloaded by glmtui).
    local_path: Optional[Path] = None
    in_catalog: bool = False
    #: The transformers class it loads into (ChatGLM3 is converted to GlmForCausalLM).
    architecture: str = "GlmForCausalLM"
    #: Other hub ids of the same model: the HF org THUDM is now zai-org (old ids redirect).
    aliases: tuple[str, ...] = ()
    #: Writes its reasoning in <think>...</think> before the answer.
    reasoning: bool = False

    @property
    def kind(self) -> Literal["chat", "base"]:
        """"base": a pre-trained model, opened in completion mode (the prompt is raw text)."""
        return "chat" if self.chat else "base"

    def repo_for(self, source: str) -> str:
        """The repo id on ``source`` ("hf" or "modelscope"); ValueError if the model is not there."""
        if source not in ("hf", "modelscope"):
            raise ValueError(f"unknown source {source!r} (use 'hf' or 'modelscope')")
        repo = self.hf_repo if source == "hf" else self.modelscope_repo
        if not repo:
            where = "Hugging Face" if source == "hf" else "ModelScope"
            raise ValueError(f"{self.name} has no {where} repo in the catalogue")
        return repo

    @property
    def dirname(self) -> str:
        """Folder name under the models dir: ``org--name`` of the canonical hub id."""
        repo = self.hf_repo or self.modelscope_repo
        if not repo:
            raise ValueError(f"{self.name} is a local folder, not a hub model")
        return repo_dirname(repo)

    def model_dir(self, models_dir: str | os.PathLike) -> Path:
        """Where this model is (or would be) on disk."""
        if self.local_path is not None:
            return self.local_path
        return Path(models_dir) / self.dirname


def repo_dirname(repo_id: str) -> str:
    """``THUDM/chatglm3-6b`` -> ``THUDM--chatglm3-6b``."""
    if not _HUB_ID.match(repo_id):
        raise ValueError(f"not a hub id (org/name): {repo_id!r}")
    return repo_id.replace("/", "--")


# ------------------------------------------------------------------ catalogue
#
# Sizes are the weights in the format glmtui downloads (safetensors when the repo
# has them) plus tokenizer/config files, rounded; parameters and context lengths
# are from the model cards/configs.  See the notes where a figure is uncertain.

CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        key="chatglm3-6b",
        name="ChatGLM3-6B",
        family="chatglm3",
        hf_repo="THUDM/chatglm3-6b",
        aliases=("zai-org/chatglm3-6b",),
        modelscope_repo="ZhipuAI/chatglm3-6b",
        params_b=6.24,
        download_bytes=12_490_000_000,
        context_length=8192,
        prompt_format="chatglm3",
        notes="Loaded natively (no remote code): ChatGLM3 weights are converted to GlmForCausalLM.",
        in_catalog=True,
    ),
    CatalogEntry(
        key="chatglm3-6b-base",
        name="ChatGLM3-6B-Base",
        family="chatglm3",
        hf_repo="THUDM/chatglm3-6b-base",
        aliases=("zai-org/chatglm3-6b-base",),
        modelscope_repo="ZhipuAI/chatglm3-6b-base",
        params_b=6.24,
        download_bytes=12_490_000_000,
        context_length=8192,
        prompt_format="chatglm3",
        chat=False,
        notes="Base (pre-trained) model: text completion, not chat.",
        in_catalog=True,
    ),
    CatalogEntry(
        key="chatglm3-6b-32k",
        name="ChatGLM3-6B-32K",
        family="chatglm3",
        hf_repo="THUDM/chatglm3-6b-32k",
        aliases=("zai-org/chatglm3-6b-32k",),
        modelscope_repo="ZhipuAI/chatglm3-6b-32k",
        params_b=6.24,
        download_bytes=12_490_000_000,
        context_length=32768,
        prompt_format="chatglm3",
        notes="Long-context ChatGLM3 (rope_ratio 50: rope theta 500000).",
        in_catalog=True,
    ),
    CatalogEntry(
        key="glm-4-9b-chat",
        name="GLM-4-9B-Chat",
        family="glm4",
        hf_repo="THUDM/glm-4-9b-chat-hf",
        aliases=("zai-org/glm-4-9b-chat-hf",),
        modelscope_repo="ZhipuAI/glm-4-9b-chat-hf",
        params_b=9.40,
        download_bytes=18_800_000_000,
        context_length=131072,
        prompt_format="chat_template",
        notes="The transformers-native (-hf) release of GLM-4-9B-Chat (GlmForCausalLM).",
        in_catalog=True,
    ),
    CatalogEntry(
        key="glm-4-9b-0414",
        name="GLM-4-9B-0414",
        family="glm4",
        hf_repo="THUDM/GLM-4-9B-0414",
        aliases=("zai-org/GLM-4-9B-0414",),
        architecture="Glm4ForCausalLM",
        modelscope_repo="ZhipuAI/GLM-4-9B-0414",
        params_b=9.40,
        download_bytes=18_800_000_000,
        context_length=32768,
        prompt_format="chat_template",
        notes="GLM-4 0414 release (Glm4ForCausalLM, needs transformers >= 4.51).",
        in_catalog=True,
    ),
    CatalogEntry(
        key="glm-edge-1.5b-chat",
        name="GLM-Edge-1.5B-Chat",
        family="glm-edge",
        hf_repo="THUDM/glm-edge-1.5b-chat",
        aliases=("zai-org/glm-edge-1.5b-chat",),
        modelscope_repo="ZhipuAI/glm-edge-1.5b-chat",
        params_b=1.59,
        download_bytes=3_200_000_000,
        context_length=8192,
        prompt_format="chat_template",
        notes="Small on-device GLM (GlmForCausalLM); runs on CPU.",
        in_catalog=True,
    ),
    CatalogEntry(
        key="glm-edge-4b-chat",
        name="GLM-Edge-4B-Chat",
        family="glm-edge",
        hf_repo="THUDM/glm-edge-4b-chat",
        aliases=("zai-org/glm-edge-4b-chat",),
        modelscope_repo="ZhipuAI/glm-edge-4b-chat",
        params_b=4.0,
        download_bytes=8_000_000_000,
        context_length=8192,
        prompt_format="chat_template",
        notes="On-device GLM (GlmForCausalLM).",
        in_catalog=True,
    ),
)

# The GLM family a GPU owner runs in late 2026.  Parameters are what transformers builds (the
# multi-token-prediction layer shipped in GLM-4.5/4.7 checkpoints is not loaded); download sizes
# are approximate (bf16 safetensors).  HF ids are under zai-org (THUDM/... redirects there).
CATALOG += (
    CatalogEntry(
        key="glm-z1-9b-0414",
        name="GLM-Z1-9B-0414",
        family="glm4",
        hf_repo="zai-org/GLM-Z1-9B-0414",
        modelscope_repo="ZhipuAI/GLM-Z1-9B-0414",
        aliases=("THUDM/GLM-Z1-9B-0414",),
        params_b=9.40,
        download_bytes=18_800_000_000,
        context_length=32768,
        notes="Reasoning model (thinks in <think> first): maths, code and step-by-step answers on one 24 GB GPU.",
        in_catalog=True,
        architecture="Glm4ForCausalLM",
        reasoning=True,
    ),
    CatalogEntry(
        key="glm-4-32b-0414",
        name="GLM-4-32B-0414",
        family="glm4",
        hf_repo="zai-org/GLM-4-32B-0414",
        modelscope_repo="ZhipuAI/GLM-4-32B-0414",
        aliases=("THUDM/GLM-4-32B-0414",),
        params_b=32.57,
        download_bytes=65_100_000_000,
        context_length=32768,
        notes="Strong general, code and tool-use model; bf16 needs an 80 GB GPU, int4 fits 24 GB.",
        in_catalog=True,
        architecture="Glm4ForCausalLM",
    ),
    CatalogEntry(
        key="glm-z1-32b-0414",
        name="GLM-Z1-32B-0414",
        family="glm4",
        hf_repo="zai-org/GLM-Z1-32B-0414",
        modelscope_repo="ZhipuAI/GLM-Z1-32B-0414",
        aliases=("THUDM/GLM-Z1-32B-0414",),
        params_b=32.57,
        download_bytes=65_100_000_000,
        context_length=32768,
        notes="The 32B reasoning model (<think>): harder maths and code; int4 fits 24 GB.",
        in_catalog=True,
        architecture="Glm4ForCausalLM",
        reasoning=True,
    ),
    CatalogEntry(
        key="glm-4.7-flash",
        name="GLM-4.7-Flash",
        family="glm4-moe",
        hf_repo="zai-org/GLM-4.7-Flash",
        modelscope_repo="ZhipuAI/GLM-4.7-Flash",
        aliases=("THUDM/GLM-4.7-Flash",),
        params_b=29.94,
        download_bytes=62_500_000_000,
        context_length=202752,
        notes="30B MoE, 3B active, MLA (a small KV cache): fast agentic coding; bf16 on an 80 GB GPU "
              "(bitsandbytes int4 leaves its experts in 16-bit).",
        in_catalog=True,
        architecture="Glm4MoeLiteForCausalLM",
        reasoning=True,
    ),
    CatalogEntry(
        key="glm-4.5-air",
        name="GLM-4.5-Air",
        family="glm4-moe",
        hf_repo="zai-org/GLM-4.5-Air",
        modelscope_repo="ZhipuAI/GLM-4.5-Air",
        aliases=("THUDM/GLM-4.5-Air",),
        params_b=103.48,
        download_bytes=221_000_000_000,
        context_length=131072,
        notes="106B MoE, 12B active: agent and reasoning work; needs ≥ 60 GB at 4-bit (a 4-bit checkpoint: "
              "bitsandbytes int4 leaves its experts in 16-bit, ~190 GiB).",
        in_catalog=True,
        architecture="Glm4MoeForCausalLM",
        reasoning=True,
    ),
)

_BY_KEY = {e.key: e for e in CATALOG}


def entries() -> list[CatalogEntry]:
    return list(CATALOG)


def get(key: str) -> CatalogEntry:
    """The catalogue entry for ``key`` (case-insensitive); KeyError if unknown."""
    return _BY_KEY[key.lower()]


class UnknownModelError(ValueError):
    """The user's model string is neither a catalogue key, a hub id nor a folder."""


def looks_like_path(spec: str) -> bool:
    """Whether the user's model string is written as a path (absolute, relative, home, a drive letter)."""
    return (
        spec.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or spec in (".", "..")
        or bool(re.match(r"^[A-Za-z]:[\\/]", spec))
    )


def _guess_family(name: str, config: dict | None = None) -> str:
    model_type = (config or {}).get("model_type", "")
    low = name.lower()
    if model_type == "chatglm" or "chatglm" in low:
        return "chatglm3"
    if "edge" in low:
        return "glm-edge"
    if model_type in ("glm4_moe", "glm4_moe_lite"):
        return "glm4-moe"
    if model_type in ("glm", "glm4") or "glm-4" in low or "glm4" in low:
        return "glm4"
    return model_type or "unknown"


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _folder_prompt_format(folder: Path, config: dict | None) -> PromptFormat:
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return "chat_template"
    tok_cfg = _read_json(folder / "tokenizer_config.json") or {}
    if tok_cfg.get("chat_template"):
        return "chat_template"
    if (config or {}).get("model_type") == "chatglm" or (folder / "tokenizer.model").exists():
        return "chatglm3"
    return "chat_template"


def entry_for_folder(path: str | os.PathLike) -> CatalogEntry:
    """An entry for a model folder on disk (the user's own, or one in the models dir)."""
    folder = Path(path).expanduser().resolve()
    config = _read_json(folder / "config.json")
    marker = _read_json(folder / COMPLETE_MARKER) or {}
    repo = marker.get("repo") if isinstance(marker.get("repo"), str) else None
    known = find_by_repo(repo) if repo else None
    if known is not None:
        return replace(known, local_path=folder)
    ctx = None
    if config:
        ctx = config.get("max_position_embeddings") or config.get("seq_length")
    return CatalogEntry(
        key=folder.name.lower(),
        name=folder.name,
        family=_guess_family(folder.name, config),
        hf_repo=None,
        context_length=ctx if isinstance(ctx, int) else None,
        prompt_format=_folder_prompt_format(folder, config),
        chat=not _names_a_base_model(folder),
        local_path=folder,
    )


def _names_a_base_model(folder: Path) -> bool:
    """Whether a folder glmtui did not download is a base model of the catalogue (ChatGLM3-6B-Base) by its
    name: its own (a git clone, ``--local-dir``) or a Hugging Face cache's ``models--org--name/snapshots/<sha>``.
    (config.json's ``_name_or_path`` is not read: a model fine-tuned from the base may carry the base's name there.)"""
    names = [folder.name]
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        names.append(folder.parent.parent.name)
    lowered = {n.rsplit("--", 1)[-1].lower() for n in names}  # org--name as hub folders write it: the name
    return any(r and r.rsplit("/", 1)[-1].lower() in lowered
               for e in CATALOG if not e.chat for r in (e.hf_repo, e.modelscope_repo, *e.aliases))


def find_by_repo(repo_id: str) -> Optional[CatalogEntry]:
    """The catalogue entry whose Hugging Face or ModelScope id, or an old id of it (``THUDM/…`` for
    ``zai-org/…`` and back), is ``repo_id`` (case-insensitive)."""
    low = repo_id.lower()
    for e in CATALOG:
        if any(r and r.lower() == low for r in (e.hf_repo, e.modelscope_repo, *e.aliases)):
            return e
    return None


def resolve(spec: str, source: str = "hf") -> CatalogEntry:
    """Turn what the user typed into an entry.

    In order: an explicit path (``/x``, ``./x``, ``~/x``) or an existing folder is a
    local model (like ``from_pretrained``, an existing folder wins over a hub id);
    a catalogue key (``chatglm3-6b``); a hub id ``org/name`` (the catalogue entry
    when one has that Hugging Face or ModelScope id, otherwise an ad-hoc entry for
    ``source``).  Raises :class:`UnknownModelError` otherwise.
    """
    spec = spec.strip()
    if not spec:
        raise UnknownModelError("empty model name")
    path = Path(spec).expanduser()
    if looks_like_path(spec) or path.is_dir():
        if not path.is_dir():
            raise UnknownModelError(f"no such model folder: {spec}")
        return entry_for_folder(path)
    if spec.lower() in _BY_KEY:
        return _BY_KEY[spec.lower()]
    if _HUB_ID.match(spec):
        known = find_by_repo(spec)
        if known is not None:
            return known
        name = spec.split("/", 1)[1]
        return CatalogEntry(
            key=name.lower(),
            name=name,
            family=_guess_family(name),
            hf_repo=spec if source == "hf" else None,
            modelscope_repo=spec if source == "modelscope" else None,
            prompt_format="chatglm3" if "chatglm" in name.lower() else "chat_template",
        )
    close = difflib.get_close_matches(spec.lower(), list(_BY_KEY), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Known models: {', '.join(_BY_KEY)}."
    raise UnknownModelError(f"unknown model {spec!r}: not a catalogue key, a hub id (org/name) or a folder.{hint}")


# ------------------------------------------------------------------ on disk


@dataclass(frozen=True)
class LocalStatus:
    """What is on disk for an entry.

    ``state`` is "absent", "partial" or "complete".  ``verified`` is True when a
    glmtui download checked every file (sizes and hashes) and the files are still
    there with those sizes; a user's own folder is ``complete`` when it looks
    loadable (config, tokenizer, all weight shards) but never ``verified``.
    """

    state: Literal["absent", "partial", "complete"]
    path: Optional[Path]
    size_bytes: int = 0
    verified: bool = False
    missing: tuple[str, ...] = field(default=())

    @property
    def present(self) -> bool:
        return self.state != "absent"

    @property
    def complete(self) -> bool:
        return self.state == "complete"


def folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def read_marker(folder: Path) -> Optional[dict]:
    """The completion marker of a downloaded model folder, or None."""
    data = _read_json(Path(folder) / COMPLETE_MARKER)
    if not data or not isinstance(data.get("files"), dict):
        return None
    return data


def _weights_missing(folder: Path) -> list[str]:
    """For a folder without a marker: what a load would miss (empty list = looks loadable)."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = _read_json(folder / index_name)
        if index is not None:
            shards = sorted(set((index.get("weight_map") or {}).values()))
            missing += [s for s in shards if not (folder / s).is_file()]
            break
    else:
        names = os.listdir(folder) if folder.is_dir() else []
        if not any(n.endswith(".safetensors") or re.match(r"pytorch_model.*\.bin$", n) for n in names):
            missing.append("weights (*.safetensors or pytorch_model*.bin)")
    has_tokenizer = any(
        (folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    ) or any(n.endswith(".tiktoken") for n in (os.listdir(folder) if folder.is_dir() else []))
    if not has_tokenizer:
        missing.append("tokenizer")
    return missing


def local_status(entry: CatalogEntry, models_dir: str | os.PathLike) -> LocalStatus:
    """Whether ``entry`` is on disk under ``models_dir`` (or at its own local path)."""
    folder = entry.model_dir(models_dir)
    if not folder.is_dir() or not any(folder.iterdir()):
        return LocalStatus("absent", None)
    size = folder_size(folder)
    marker = read_marker(folder)
    if marker is not None and not (folder / PARTIAL_DIR).exists():
        missing = []
        for name, info in marker["files"].items():
            p = folder / name
            want = info.get("size") if isinstance(info, dict) else None
            if not p.is_file() or (want is not None and p.stat().st_size != want):
                missing.append(name)
        if not missing:
            return LocalStatus("complete", folder, size, verified=True)
        return LocalStatus("partial", folder, size, missing=tuple(missing))
    if entry.local_path is not None and not (folder / PARTIAL_DIR).exists():
        missing = _weights_missing(folder)
        return LocalStatus("partial" if missing else "complete", folder, size, missing=tuple(missing))
    return LocalStatus("partial", folder, size)


def print_catalog(models_dir: str | os.PathLike | None = None) -> int:
    """``glmtui models``: the catalogue and what of it is on disk, as a table. Returns the exit code."""
    from rich.console import Console
    from rich.table import Table

    if models_dir is None:
        from .config import default_paths

        models_dir = default_paths().models_dir
    table = Table(title=f"Models (folder: {models_dir})", caption="download one with: glmtui pull KEY")
    table.add_column("key", no_wrap=True)
    for col in ("params", "download", "context"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("prompt", no_wrap=True)
    table.add_column("on disk", no_wrap=True)
    for e in CATALOG:
        st = local_status(e, models_dir)
        disk = {"absent": "-", "partial": "[yellow]partial[/yellow]", "complete": "[green]ready[/green]"}[st.state]
        table.add_row(
            e.key, f"{e.params_b:g}B" if e.params_b else "?",
            f"{e.download_bytes / GB:.1f} GB" if e.download_bytes else "?",
            f"{e.context_length // 1024}K" if e.context_length else "?",
            ("ChatGLM3" if e.prompt_format == "chatglm3" else "template") + ("" if e.chat else ", base"), disk,
        )
    Console().print(table)
    return 0
