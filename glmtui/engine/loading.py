"""Resolve a model folder and load it in a quantization mode (kept whole past 400 lines: the load paths share checks).

ChatGLM3 checkpoints (``model_type: chatglm``) are loaded as transformers'
native ``GlmForCausalLM`` by renaming and splitting their weights at load
time: the published remote code no longer runs on current transformers and
running downloaded code is a risk, so ``trust_remote_code`` is never used.
Pickle shards are only ever read with ``weights_only=True`` (weights.py), and
every tensor is read into private memory, never left mapped to its file.
Before the model is built, checks.py compares config.json with the files.

This module imports torch and transformers at module level: only the worker
thread imports it.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from . import checks
from .api import MODES
from .checks import CheckFailed
from .placement import Placement, balanced_max_memory, placement_of
from .prompts import ChatFormat, ChatGLM3Format, ChatTemplateFormat, PromptError
from .weights import StoredTensor, WeightReadError, read_checkpoint


def _quiet_transformers() -> None:
    """Progress bars and warnings on stderr would scribble over the TUI."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Library log lines on stderr would scribble over the TUI too.
    for name in ("bitsandbytes", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


_quiet_transformers()

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded, with a message meant for the user."""


@dataclass
class LoadedModel:
    model: object
    chat_format: ChatFormat
    name: str
    path: Path
    mode: str
    device: str
    context_length: int
    footprint_bytes: int
    load_seconds: float
    # What the user should know about how it was loaded (layers left in 16-bit, offload...).
    notes: tuple[str, ...] = ()
    # Where every decoder layer went: GPU n, CPU, disk.
    placement: Optional[Placement] = None
    # The library that quantized int8/int4 ("torchao", "bitsandbytes"); None for 16/32-bit.
    quant_backend: Optional[str] = None


Progress = Callable[[str, Optional[float]], None]


# ---------------------------------------------------------------- checks


def read_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not folder.exists():
        raise ModelLoadError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise ModelLoadError(f"not a folder: {folder}")
    if not config_path.exists():
        raise ModelLoadError(f"{folder} has no config.json — is this a model folder, and is its download complete?")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"config.json in {folder} cannot be read: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"config.json in {folder} is not a JSON object")
    return config


def is_chatglm3(config: dict) -> bool:
    return config.get("model_type") == "chatglm"


def weight_files(folder: Path) -> tuple[str, list[Path]]:
    """The checkpoint's weight files in one format (safetensors preferred).

    Checks a sharded checkpoint's index against the files on disk so a
    missing shard is reported before anything is loaded.
    """
    for fmt, index_name, pattern in (
        ("safetensors", "model.safetensors.index.json", "*.safetensors"),
        ("bin", "pytorch_model.bin.index.json", "pytorch_model*.bin"),
    ):
        index_path = folder / index_name
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelLoadError(f"{index_name} in {folder} is unreadable: {exc}") from exc
            shards = sorted(set(weight_map.values()))
            missing = [name for name in shards if not (folder / name).exists()]
            if missing:
                raise ModelLoadError(
                    f"{folder} is incomplete: missing weight shard(s) {', '.join(missing)} "
                    f"({len(shards) - len(missing)} of {len(shards)} present). Download it again to resume."
                )
            return fmt, [folder / name for name in shards]
        files = sorted(folder.glob(pattern))
        if files:
            return fmt, files
    raise ModelLoadError(f"{folder} has no weights (*.safetensors or pytorch_model*.bin)")


def mode_support(mode: str, device: str) -> Optional[str]:
    """Why ``mode`` cannot run on ``device`` here, or None when it can."""
    if mode not in MODES:
        return f"unknown quantization mode {mode!r}; choose one of {', '.join(MODES)}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "CUDA was requested but no CUDA GPU is visible to torch"
    if mode in ("int8", "int4"):
        try:
            import bitsandbytes  # noqa: F401 - imported only to see that it can be
        except Exception as exc:  # noqa: BLE001 - ImportError, or a broken native library
            return f"{mode} needs bitsandbytes, which cannot be imported here: {exc}"
    if mode == "fp16" and device == "cpu":
        return None  # slow but correct on current torch
    return None


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ---------------------------------------------------------------- ChatGLM3 -> native GLM


def chatglm3_to_glm_config(config: dict):
    """Translate ChatGLM3's config.json into a native ``GlmConfig``."""
    from transformers import GlmConfig

    try:
        heads = int(config["num_attention_heads"])
        kv_heads = int(config["multi_query_group_num"]) if config.get("multi_query_attention", True) else heads
        hidden = int(config["hidden_size"])
        rope_theta = 10000.0 * float(config.get("rope_ratio", 1.0) or 1.0)
        return GlmConfig(
            vocab_size=int(config["padded_vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["ffn_hidden_size"]),
            num_hidden_layers=int(config["num_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=int(config.get("kv_channels") or hidden // heads),
            max_position_embeddings=int(config.get("seq_length", 8192)),
            rms_norm_eps=float(config.get("layernorm_epsilon", 1e-5)),
            attention_bias=bool(config.get("add_qkv_bias", True)),
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "partial_rotary_factor": 0.5},
            tie_word_embeddings=False,
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=2,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"ChatGLM3 config.json is missing or has a bad field: {exc}") from exc


_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}


def chatglm3_state_dict_to_glm(tensors: dict, glm_config) -> dict:
    """Rename ChatGLM3 tensors to native GLM names; split the fused QKV.

    Values are :class:`StoredTensor` entries (read later, a range of rows each
    for q, k and v) or plain tensors (split as views). Names that are not
    ChatGLM3's pass through unchanged, for the checks to report.
    """
    q_size = glm_config.num_attention_heads * glm_config.head_dim
    kv_size = glm_config.num_key_value_heads * glm_config.head_dim
    out: dict = {}
    for name, tensor in tensors.items():
        if name.endswith("rotary_pos_emb.inv_freq"):
            continue  # recomputed from the config by design
        if name in _TOP_RENAMES:
            out[_TOP_RENAMES[name]] = tensor
            continue
        match = _LAYER.match(name)
        rest = match.group(2) if match else ""
        prefix = f"model.layers.{match.group(1)}." if match else ""
        if rest in _LAYER_RENAMES:
            out[prefix + _LAYER_RENAMES[rest]] = tensor
        elif rest.startswith("self_attention.query_key_value."):
            kind = rest.rsplit(".", 1)[1]  # weight or bias
            rows = q_size + 2 * kv_size
            if tensor.shape[0] != rows:
                raise ModelLoadError(
                    f"{name} is {list(tensor.shape)} in the weight files; config.json implies {rows} rows "
                    f"({glm_config.num_attention_heads} heads and 2 x {glm_config.num_key_value_heads} key/value "
                    f"groups of {glm_config.head_dim}): config.json does not match the weights"
                )
            bounds = {"q": (0, q_size), "k": (q_size, q_size + kv_size), "v": (q_size + kv_size, rows)}
            for part, (start, stop) in bounds.items():
                piece = tensor.rows(start, stop) if isinstance(tensor, StoredTensor) else tensor[start:stop]
                out[prefix + f"self_attn.{part}_proj.{kind}"] = piece
        else:
            out[name] = tensor
    return out


_TOP_BACK = {glm: original for original, glm in _TOP_RENAMES.items()}
_LAYER_BACK = {glm: original for original, glm in _LAYER_RENAMES.items()}
_GLM_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_QKV_PART = re.compile(r"^self_attn\.[qkv]_proj\.(weight|bias)$")


def chatglm3_name(name: str) -> str:
    """The ChatGLM3 checkpoint name a native GLM tensor comes from (for messages)."""
    if name in _TOP_BACK:
        return _TOP_BACK[name]
    match = _GLM_LAYER.match(name)
    if not match:
        return name
    layer, rest = match.groups()
    if rest in _LAYER_BACK:
        return f"transformer.encoder.layers.{layer}.{_LAYER_BACK[rest]}"
    qkv = _QKV_PART.match(rest)
    if qkv:
        return f"transformer.encoder.layers.{layer}.self_attention.query_key_value.{qkv.group(1)}"
    return name


def looks_like_chatglm3(names) -> bool:
    return any(name.startswith(("transformer.encoder.layers.", "transformer.embedding.")) for name in names)


def read_weights(fmt: str, files: list[Path], progress: Progress) -> dict:
    """The checkpoint's tensors by name, read into private memory only when used."""
    try:
        return read_checkpoint(fmt, files, progress)
    except WeightReadError as exc:
        raise ModelLoadError(str(exc)) from exc


# ---------------------------------------------------------------- loading


def _quantization_config(mode: str, compute_dtype, skip: Optional[list[str]] = None):
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip
    )


def quant_backend(mode: str, device: str):
    """Which library quantizes ``mode`` here (quant_backends.choose with this machine's facts); None for 16/32-bit."""
    from . import quant_backends

    capability: Optional[tuple[int, int]] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        capability = (major, minor)
    return quant_backends.choose(mode, device, torchao=quant_backends.torchao_version(), capability=capability)


def _load_kwargs(mode: str, device: str, skip: Optional[list[str]] = None, choice=None) -> dict:
    """from_pretrained's dtype, device map and quantization config (``choice``: quant_backend's; None: bitsandbytes)."""
    if mode in DTYPES:
        return {"dtype": DTYPES[mode], "device_map": device}
    if choice is not None and choice.backend == "torchao":
        from . import quant_backends

        compute = torch.bfloat16  # torchao's int4 tile layout takes bf16 only; int8 weight-only computes in it too
        return {"dtype": compute, "device_map": device,
                "quantization_config": quant_backends.quantization_config(choice, mode, compute, skip)}
    if mode == "int8":
        # LLM.int8 computes in fp16 (it would cast bf16 inputs on every matmul).
        compute = torch.float16
    else:
        compute = torch.bfloat16 if device == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    return {"dtype": compute, "device_map": device, "quantization_config": _quantization_config(mode, compute, skip)}


def _native_architecture_check(config: dict) -> None:
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        hint = " It ships its own code (auto_map), which glmtui never runs." if "auto_map" in config else ""
        raise ModelLoadError(
            f"unknown architecture {model_type!r} — transformers has no built-in model for it.{hint} "
            "glmtui loads ChatGLM3 checkpoints (model_type \"chatglm\") and architectures built into transformers."
        )


@dataclass
class _Prepared:
    """A checkpoint checked against its config, ready to be built."""

    # a PreTrainedModel class: Any, as its from_pretrained(output_loading_info=True) returns a tuple its types deny
    model_class: Any
    config: object  # the transformers config
    tensors: dict  # name -> StoredTensor, in the model's names
    meta_model: object  # the model on the meta device (names, shapes, Linear widths)
    chat_format: ChatFormat
    context_length: int
    display: Callable[[str], str] = lambda name: name


def _check_sizes(config: dict, tensors: dict, mode: str, device: str) -> None:
    """Before anything is allocated: a config far larger than the files, or than the machine."""
    checks.check_size_against_files(config, sum(t.numel() for t in tensors.values()))
    checks.check_fits_machine(config, mode, device)


def _prepare_chatglm3(folder: Path, config: dict, fmt: str, files: list[Path], mode: str, device: str,
                      progress: Progress) -> _Prepared:
    from transformers import GlmForCausalLM

    tokenizer_model = folder / "tokenizer.model"
    if not tokenizer_model.exists():
        raise ModelLoadError(f"{folder} has no tokenizer.model (ChatGLM3's SentencePiece tokenizer)")
    progress("reading tokenizer", None)
    try:
        chat_format = ChatGLM3Format(tokenizer_model)
    except Exception as exc:
        raise ModelLoadError(f"tokenizer.model cannot be read: {exc}") from exc
    glm_config = chatglm3_to_glm_config(config)
    glm_config.eos_token_id = list(chat_format.stop_token_ids)
    if chat_format.vocab_size > glm_config.vocab_size:
        raise ModelLoadError(
            f"the tokenizer has {chat_format.vocab_size} tokens but the model only {glm_config.vocab_size}: "
            "tokenizer.model does not belong to these weights"
        )
    stored = read_weights(fmt, files, progress)
    _check_sizes(config, stored, mode, device)
    tensors = chatglm3_state_dict_to_glm(stored, glm_config)
    meta = checks.build_on_meta(lambda: GlmForCausalLM(glm_config))
    checks.compare_with_model({name: t.shape for name, t in tensors.items()}, meta, chatglm3_name)
    return _Prepared(GlmForCausalLM, glm_config, tensors, meta, chat_format,
                     glm_config.max_position_embeddings, chatglm3_name)


def _prepare_native(folder: Path, config: dict, fmt: str, files: list[Path], mode: str, device: str,
                    progress: Progress) -> _Prepared:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _native_architecture_check(config)
    tensors = read_weights(fmt, files, progress)
    if looks_like_chatglm3(tensors):
        raise ModelLoadError(
            f"these weights are in ChatGLM3's layout (transformer.encoder.layers...) but config.json says "
            f"model_type {config.get('model_type')!r}: glmtui reads this layout only as model_type \"chatglm\" "
            "(ChatGLM3's own config.json)."
        )
    _check_sizes(config, tensors, mode, device)
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        meta = checks.build_on_meta(lambda: AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False))
    except Exception as exc:
        raise ModelLoadError(f"config.json in {folder} describes no model transformers can build: "
                             f"{checks.plain_error(str(exc))}") from exc
    if "quantization_config" not in config and checks.can_compare_names(meta):
        checks.compare_with_model({name: t.shape for name, t in tensors.items()}, meta)
    progress("reading tokenizer", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"the tokenizer in {folder} cannot be loaded: {checks.plain_error(str(exc))}") from exc
    chat_format = ChatTemplateFormat(tokenizer, _generation_config_stops(folder))
    embeddings = meta.get_input_embeddings()
    vocab = embeddings.weight.shape[0] if embeddings is not None else getattr(hf_config, "vocab_size", 0)
    if vocab and chat_format.vocab_size > vocab:
        raise ModelLoadError(
            f"the tokenizer has {chat_format.vocab_size} tokens but the model only {vocab}: "
            "the tokenizer does not belong to these weights"
        )
    context_length = int(getattr(hf_config, "max_position_embeddings", 0) or 0)
    return _Prepared(type(meta), hf_config, tensors, meta, chat_format, context_length)


def _int4_cpu_fallback(prepared: _Prepared, kwargs: dict, name: str) -> Optional[str]:
    """Keep in 16-bit the Linears bitsandbytes' int4 CPU kernel cannot run; say which (None: all can run)."""
    odd, quantized = checks.int4_cpu_16bit_layers(prepared.meta_model)
    if not odd:
        return None
    if len(odd) == quantized:
        raise ModelLoadError(
            f"int4 on CPU cannot quantize any layer of {name}: bitsandbytes' CPU kernel needs Linear input widths "
            f"divisible by {checks.INT4_CPU_IN_MULTIPLE} and output widths by {checks.INT4_CPU_OUT_MULTIPLE}. "
            "Choose int8 or bf16."
        )
    compute = kwargs["dtype"]
    kwargs["quantization_config"] = _quantization_config("int4", compute, checks.skip_modules(prepared.meta_model, odd))
    dtype_name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(compute, str(compute))
    return checks.describe_16bit_layers(odd, quantized, dtype_name)


def _spread_over_gpus(kwargs: dict, config: dict, mode: str) -> None:
    """``--device auto`` with several GPUs: accelerate's map over all of them, each GPU's share in
    proportion to its free memory now (placement.balanced_max_memory); 16-bit modes may spill the
    rest to host RAM, which the load then reports as offload."""
    count = torch.cuda.device_count()
    if count < 2:
        return
    try:
        free = [int(torch.cuda.mem_get_info(i)[0]) for i in range(count)]
    except Exception:  # noqa: BLE001 - cannot ask the driver: keep the single-GPU map
        return
    try:
        from .predict import predict_config

        weights = predict_config(config, (mode,), device="cuda")[mode].weight_bytes
    except Exception:  # noqa: BLE001 - no exact count: split by free memory alone
        weights = sum(free)
    cpu = None
    if mode in DTYPES:
        import psutil

        cpu = int(psutil.virtual_memory().available * 0.8)
    hidden = int(config.get("hidden_size") or 0)
    vocab = int(config.get("vocab_size") or config.get("padded_vocab_size") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("num_layers") or 1)
    largest = max(hidden * vocab * (4 if mode == "fp32" else 2), weights // max(1, layers))  # embeddings or a layer
    kwargs["device_map"] = "auto"
    kwargs["max_memory"] = balanced_max_memory(free, weights, cpu_bytes=cpu, largest_module_bytes=largest)


def _first_forward(model, mode: str, device: str) -> None:
    """One token through the quantized model: a kernel that cannot run fails here, not at every reply."""
    try:
        with torch.no_grad():
            model(torch.zeros((1, 1), dtype=torch.long, device=device))
    except Exception as exc:
        raise ModelLoadError(f"{mode} loaded but cannot compute on {device}: {checks.plain_error(str(exc))}") from exc


def load_model(
    path: str | Path,
    mode: str = "bf16",
    device: str = "auto",
    progress: Progress = lambda stage, fraction: None,
) -> LoadedModel:
    """Load a model folder for chat in the given quantization mode."""
    from .memory import measured_footprint_bytes

    started = time.perf_counter()
    folder = Path(path).expanduser()
    requested_device = device
    device = resolve_device(device)
    reason = mode_support(mode, device)
    if reason:
        raise ModelLoadError(reason)
    config = read_config(folder)
    fmt, files = weight_files(folder)
    model = prepared = None
    try:
        prepare = _prepare_chatglm3 if is_chatglm3(config) else _prepare_native
        prepared = prepare(folder, config, fmt, files, mode, device, progress)
        backend = quant_backend(mode, device)
        kwargs = _load_kwargs(mode, device, choice=backend)
        if requested_device == "auto" and device == "cuda":
            _spread_over_gpus(kwargs, config, mode)
        notes = []
        if mode == "int4" and device.startswith("cpu"):
            note = _int4_cpu_fallback(prepared, kwargs, folder.name)
            if note:
                notes.append(note)
                progress(note, None)
        progress("building model", None)
        model, info = prepared.model_class.from_pretrained(
            None,
            config=prepared.config,
            state_dict=prepared.tensors,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported in info and refused below, with names and shapes
            **kwargs,
        )
        checks.check_loading_info(info, prepared.display)
        if mode in ("int8", "int4") and device.startswith("cpu"):
            _first_forward(model, mode, device)
        if not is_chatglm3(config):
            _adopt_generation_config(model, folder)
        model.eval()
        placement = placement_of(model)
        if placement.offloaded:
            notes.append(placement.summary())
        if backend is not None:  # which library runs int8/int4 here, and why
            notes.append(backend.reason)
        chat_format, context_length = prepared.chat_format, prepared.context_length
        prepared = None  # the last references to the checkpoint's files
        progress("ready", 1.0)
        return LoadedModel(
            model=model,
            chat_format=chat_format,
            name=folder.name,
            path=folder,
            mode=mode,
            device=device,
            context_length=context_length,
            footprint_bytes=measured_footprint_bytes(model),
            load_seconds=time.perf_counter() - started,
            notes=tuple(notes),
            placement=placement,
            quant_backend=backend.backend if backend is not None else None,
        )
    except ModelLoadError:
        del model, prepared
        release_memory()
        raise
    except CheckFailed as exc:
        del model, prepared
        release_memory()
        raise ModelLoadError(str(exc)) from exc
    except PromptError as exc:
        del model, prepared
        release_memory()
        raise ModelLoadError(str(exc)) from exc
    except (torch.OutOfMemoryError, MemoryError) as exc:
        del model, prepared
        release_memory()
        raise ModelLoadError(
            f"out of memory while loading {folder.name} in {mode} on {device}: try int8 or int4, "
            "or free memory used by other processes"
        ) from exc
    except Exception as exc:
        del model, prepared
        release_memory()
        if "out of memory" in str(exc).lower():
            raise ModelLoadError(f"out of memory while loading {folder.name} in {mode} on {device}") from exc
        raise ModelLoadError(
            f"loading {folder.name} failed: {type(exc).__name__}: {checks.plain_error(str(exc))}"
        ) from exc


def _adopt_generation_config(model, folder: Path) -> None:
    """generation_config.json as from_pretrained(folder) would have read it (plain JSON, no code)."""
    if not (folder / "generation_config.json").exists():
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    except Exception:  # noqa: BLE001 - the model's own file: a bad one only loses its defaults
        pass  # glmtui passes its own generation settings; the file only adds defaults


def _generation_config_stops(folder: Path) -> list[int]:
    try:
        data = json.loads((folder / "generation_config.json").read_text())
    except (OSError, ValueError):
        return []
    eos = data.get("eos_token_id")
    if isinstance(eos, int):
        return [eos]
    return [int(x) for x in eos] if isinstance(eos, list) else []


def release_memory() -> Optional[int]:
    """Collect garbage and hand cached CUDA blocks back; return bytes still reserved."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return int(torch.cuda.memory_reserved())
    return None
