"""Which files of a repo a load needs.

Config and generation config, tokenizer files (``tokenizer.json``/``tokenizer.model``/
``*.tiktoken``, special tokens, chat template) and the weights in ONE format
(``*.safetensors`` when the repo has them, else ``pytorch_model*.bin``; with an index,
only the shards it names).  ``*.py`` remote code is never downloaded.
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Iterable

from .errors import CorruptFileError, NoUsableWeightsError

NEEDED_PATTERNS = (
    "config*.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "*.tiktoken",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
)
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
INDEXES = (SAFETENSORS_INDEX, BIN_INDEX)
_BIN_RE = re.compile(r"^pytorch_model.*\.bin$")


def select_files(names: Iterable[str]) -> tuple[list[str], str]:
    """The files of a repo listing that a load needs, and the weight format.

    Top-level files only; never ``*.py``.  Weights: ``*.safetensors`` (+ index)
    when present, else ``pytorch_model*.bin`` (+ index).  Raises
    :class:`NoUsableWeightsError` when there are neither.
    """
    top = [n for n in names if "/" not in n and not n.endswith(".py")]
    safetensors = [n for n in top if n.endswith(".safetensors")]
    bins = [n for n in top if _BIN_RE.match(n)]
    if safetensors:
        fmt, weights = "safetensors", safetensors + [n for n in top if n == SAFETENSORS_INDEX]
    elif bins:
        fmt, weights = "bin", bins + [n for n in top if n == BIN_INDEX]
    else:
        raise NoUsableWeightsError(
            "the repo has no *.safetensors or pytorch_model*.bin weights "
            "(GGUF, ONNX or remote-code-only repos are not supported)"
        )
    weight_set = set(weights)
    others = [
        n for n in top if n not in weight_set and n not in INDEXES
        and any(fnmatch.fnmatchcase(n, p) for p in NEEDED_PATTERNS)
    ]
    return sorted(others) + sorted(weights), fmt


def narrow_by_index(files: list[str], index_name: str, index_bytes: bytes) -> list[str]:
    """Keep only the shards the index names (repos sometimes carry stray weight files)."""
    try:
        weight_map = json.loads(index_bytes.decode("utf-8")).get("weight_map") or {}
    except (ValueError, AttributeError) as e:
        raise CorruptFileError(f"{index_name} is not valid JSON: {e}", [index_name]) from e
    shards = set(weight_map.values())
    missing = shards - set(files)
    if missing:
        raise CorruptFileError(f"{index_name} names shards the repo does not have: {sorted(missing)}", [index_name])
    is_shard = (lambda n: n.endswith(".safetensors")) if index_name == SAFETENSORS_INDEX else _BIN_RE.match
    return [n for n in files if not is_shard(n) or n in shards]
