"""Reading a checkpoint's tensors: lazily, into private memory, pickles without code.

Every tensor handed to transformers is read into memory of its own, never left
a view of a memory-mapped file: a weight file overwritten or truncated on disk
after loading must not change the loaded model (NaN logits) or kill the process
(SIGBUS). Each entry is read when transformers indexes it (``entry[...]``), one
tensor at a time, so reading adds one tensor to the peak, not a second model.

Pickle shards are read with ``weights_only=True`` only; a pickle that would run
code is refused and said to be so.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


class WeightReadError(Exception):
    """A weight file that cannot be read, with a message meant for the user."""


class StoredTensor:
    """One checkpoint tensor (or a range of its rows), read into private memory on ``[...]``."""

    __slots__ = ("shape", "dtype", "_read", "_rows")

    def __init__(self, shape, dtype, read: Callable[[Optional[tuple[int, int]]], torch.Tensor], rows=None):
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self._read = read
        self._rows = rows

    def rows(self, start: int, stop: int) -> "StoredTensor":
        """Rows ``start:stop`` along the first dimension, read on their own."""
        base = self._rows[0] if self._rows else 0
        return StoredTensor((stop - start, *self.shape[1:]), self.dtype, self._read, (base + start, base + stop))

    def numel(self) -> int:
        return self.shape.numel()

    def __getitem__(self, key) -> torch.Tensor:
        tensor = self._read(self._rows)
        return tensor if key is Ellipsis else tensor[key]


def read_checkpoint(fmt: str, files: list[Path], progress=lambda stage, fraction: None) -> dict[str, StoredTensor]:
    """Every tensor of the checkpoint by name; nothing is read into memory yet."""
    entries: dict[str, StoredTensor] = {}
    for index, path in enumerate(files):
        progress(f"reading {path.name}", index / len(files))
        entries.update(_safetensors_entries(path) if fmt == "safetensors" else _pickle_entries(path))
    progress("weights read", 1.0)
    return entries


def _safetensors_entries(path: Path) -> dict[str, StoredTensor]:
    from safetensors import safe_open

    try:
        try:
            # pread: bytes are read into fresh memory, nothing stays mapped.
            handle = safe_open(str(path), framework="pt", device="cpu", backend="pread")
            private = True
        except TypeError:  # a safetensors without the pread backend: mapped, so copy each read
            handle = safe_open(str(path), framework="pt", device="cpu")
            private = False
        entries = {}
        for name in handle.keys():
            piece = handle.get_slice(name)

            def read(rows, piece=piece, handle=handle):
                tensor = piece[rows[0] : rows[1]] if rows else piece[...]
                return tensor if private else tensor.clone(memory_format=torch.contiguous_format)

            entries[name] = StoredTensor(tuple(piece.get_shape()), _ST_DTYPES.get(piece.get_dtype()), read)
        return entries
    except MemoryError:
        raise  # out of memory (or address space) is not damage: the loader says so
    except Exception as exc:
        raise WeightReadError(
            f"weight file {path.name} cannot be read (truncated or corrupt?): {_first_line(exc)}"
        ) from exc


def _pickle_entries(path: Path) -> dict[str, StoredTensor]:
    try:
        with warnings.catch_warnings():  # torch's warnings on stderr would scribble over the TUI
            warnings.simplefilter("ignore")
            try:
                data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap can only be used" not in str(exc):
                    raise
                # The legacy (pre-zip) format cannot be mapped: read it into memory.
                data = torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise WeightReadError(describe_pickle_error(path.name, exc)) from exc
    if not isinstance(data, dict) or not all(isinstance(t, torch.Tensor) for t in data.values()):
        raise WeightReadError(f"weight file {path.name} does not hold named tensors (is it a model checkpoint?)")

    def entry(tensor: torch.Tensor) -> StoredTensor:
        def read(rows):
            part = tensor[rows[0] : rows[1]] if rows else tensor
            # A copy, not a view of the mapped file (torch.load(mmap=True) maps it).
            return part.clone(memory_format=torch.contiguous_format)

        return StoredTensor(tuple(tensor.shape), tensor.dtype, read)

    return {str(name): entry(tensor) for name, tensor in data.items()}


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_ADVICE = ("weights_only", "torch.load", "safe_globals", "trust", "documentation", "file an issue", "allowlist")


def describe_pickle_error(filename: str, exc: BaseException) -> str:
    """A pickle shard that torch refused, said plainly; torch's advice to turn the safety off is never repeated."""
    text = str(exc)
    refused = isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text
    if not refused:
        return f"weight file {filename} cannot be read (truncated or corrupt?): {_first_line(exc)}"
    found = _GLOBAL.search(text)
    if found:
        return (
            f"weight file {filename} contains code (it would call {found.group(1)}) and was refused for safety: "
            "glmtui reads only plain tensors from pickle files. Get the weights from a source you trust, "
            "preferably as .safetensors."
        )
    detail = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and "Weights only load failed" not in line and not any(a in line for a in _ADVICE)
    ]
    reason = f" ({detail[0]})" if detail else ""
    return (
        f"weight file {filename} holds pickled objects other than tensors{reason} and was refused for safety: "
        "glmtui reads only plain tensors from pickle files."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
