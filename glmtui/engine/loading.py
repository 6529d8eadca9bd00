"""Resolve a model folder and load it with a quantization mode.

ChatGLM3 checkpoints (``model_type: chatglm``) are loaded as transformers'
native ``GlmForCausalLM`` by renaming and splitting their weights at load
time: the published remote code no longer runs on current transformers and
running downloaded code is a risk, so ``trust_remote_code`` is never used.
Pickle shards are only ever read with ``weights_only=True``.

This module imports torch and transformers at module level: only the worker
thread imports it.
"""

from __future__ import annotations

import gc
import json
import re
import time
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .prompts import ChatFormat, ChatGLM3Format, ChatTemplateFormat, PromptError

def _quiet_transformers() -> None:
    """Progress bars and warnings on stderr would scribble over the TUI."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Library log lines on stderr would scribble over the TUI too.
    for name in ("bitsandbytes", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


_quiet_transformers()

MODES = ("bf16", "fp16", "fp32", "int8", "int4")
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
            import bitsandbytes  # noqa: F401
        except Exception as exc:  # ImportError, or a broken native library
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

    Slicing keeps views, so memory-mapped shards stay unmaterialized.
    """
    q_size = glm_config.num_attention_heads * glm_config.head_dim
    kv_size = glm_config.num_key_value_heads * glm_config.head_dim
    out: dict = {}
    for name, tensor in tensors.items():
        if name.endswith("rotary_pos_emb.inv_freq"):
            continue
        if name in _TOP_RENAMES:
            out[_TOP_RENAMES[name]] = tensor
            continue
        match = _LAYER.match(name)
        if not match:
            raise ModelLoadError(f"unexpected tensor {name!r} in a ChatGLM3 checkpoint")
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        if rest in _LAYER_RENAMES:
            out[prefix + _LAYER_RENAMES[rest]] = tensor
        elif rest.startswith("self_attention.query_key_value."):
            kind = rest.rsplit(".", 1)[1]  # weight or bias
            if tensor.shape[0] != q_size + 2 * kv_size:
                raise ModelLoadError(
                    f"{name} has {tensor.shape[0]} rows; the config implies {q_size + 2 * kv_size}. "
                    "config.json does not match the weights."
                )
            q, k, v = torch.split(tensor, [q_size, kv_size, kv_size], dim=0)
            out[prefix + f"self_attn.q_proj.{kind}"] = q
            out[prefix + f"self_attn.k_proj.{kind}"] = k
            out[prefix + f"self_attn.v_proj.{kind}"] = v
        else:
            raise ModelLoadError(f"unexpected tensor {name!r} in a ChatGLM3 checkpoint")
    return out


def read_weights(fmt: str, files: list[Path], progress: Progress) -> dict:
    """Read a checkpoint's tensors lazily (mmap) where the format allows."""
    tensors: dict = {}
    for index, path in enumerate(files):
        progress(f"reading {path.name}", index / len(files))
        try:
            if fmt == "safetensors":
                from safetensors.torch import load_file

                tensors.update(load_file(str(path), device="cpu"))
            else:
                tensors.update(torch.load(str(path), map_location="cpu", weights_only=True, mmap=True))
        except Exception as exc:
            raise ModelLoadError(f"weight file {path.name} cannot be read (truncated or corrupt?): {exc}") from exc
    progress("weights read", 1.0)
    return tensors


# ---------------------------------------------------------------- loading


def _quantization_config(mode: str, compute_dtype):
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
    )


def _load_kwargs(mode: str, device: str) -> dict:
    if mode in DTYPES:
        return {"dtype": DTYPES[mode], "device_map": device}
    if mode == "int8":
        # LLM.int8 computes in fp16 (it would cast bf16 inputs on every matmul).
        compute = torch.float16
    else:
        compute = torch.bfloat16 if device == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    return {"dtype": compute, "device_map": device, "quantization_config": _quantization_config(mode, compute)}


def _native_architecture_check(config: dict) -> None:
    from transformers import AutoConfig, CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        hint = " It ships its own code (auto_map), which glmtui never runs." if "auto_map" in config else ""
        raise ModelLoadError(
            f"unknown architecture {model_type!r} — transformers has no built-in model for it.{hint}"
        )
    del AutoConfig


def load_model(
    path: str | Path,
    mode: str = "bf16",
    device: str = "auto",
    progress: Progress = lambda stage, fraction: None,
) -> LoadedModel:
    """Load a model folder for chat in the given quantization mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .memory import measured_footprint_bytes

    started = time.perf_counter()
    folder = Path(path).expanduser()
    device = resolve_device(device)
    reason = mode_support(mode, device)
    if reason:
        raise ModelLoadError(reason)
    config = read_config(folder)
    fmt, files = weight_files(folder)
    kwargs = _load_kwargs(mode, device)
    model = None
    try:
        if is_chatglm3(config):
            tokenizer_model = folder / "tokenizer.model"
            if not tokenizer_model.exists():
                raise ModelLoadError(f"{folder} has no tokenizer.model (ChatGLM3's SentencePiece tokenizer)")
            progress("reading tokenizer", None)
            try:
                chat_format: ChatFormat = ChatGLM3Format(tokenizer_model)
            except Exception as exc:
                raise ModelLoadError(f"tokenizer.model cannot be read: {exc}") from exc
            glm_config = chatglm3_to_glm_config(config)
            glm_config.eos_token_id = list(chat_format.stop_token_ids)
            if chat_format.vocab_size > glm_config.vocab_size:
                raise ModelLoadError(
                    f"the tokenizer has {chat_format.vocab_size} tokens but the model only {glm_config.vocab_size}: "
                    "tokenizer.model does not belong to these weights"
                )
            tensors = chatglm3_state_dict_to_glm(read_weights(fmt, files, progress), glm_config)
            progress("building model", None)
            from transformers import GlmForCausalLM

            model = GlmForCausalLM.from_pretrained(None, config=glm_config, state_dict=tensors, **kwargs)
            del tensors
            context_length = glm_config.max_position_embeddings
        else:
            _native_architecture_check(config)
            progress("reading tokenizer", None)
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
            except Exception as exc:
                raise ModelLoadError(f"the tokenizer in {folder} cannot be loaded: {exc}") from exc
            generation_stops = _generation_config_stops(folder)
            chat_format = ChatTemplateFormat(tokenizer, generation_stops)
            progress("loading weights", None)
            model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False, **kwargs)
            if chat_format.vocab_size > model.config.vocab_size:
                raise ModelLoadError(
                    f"the tokenizer has {chat_format.vocab_size} tokens but the model only "
                    f"{model.config.vocab_size}: the tokenizer does not belong to these weights"
                )
            context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        model.eval()
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
        )
    except ModelLoadError:
        del model
        release_memory()
        raise
    except PromptError as exc:
        del model
        release_memory()
        raise ModelLoadError(str(exc)) from exc
    except (torch.OutOfMemoryError, MemoryError) as exc:
        del model
        release_memory()
        raise ModelLoadError(
            f"out of memory while loading {folder.name} in {mode} on {device}: try int8 or int4, "
            "or free memory used by other processes"
        ) from exc
    except Exception as exc:
        del model
        release_memory()
        if "out of memory" in str(exc).lower():
            raise ModelLoadError(f"out of memory while loading {folder.name} in {mode} on {device}") from exc
        raise ModelLoadError(f"loading {folder.name} failed: {type(exc).__name__}: {exc}") from exc


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
