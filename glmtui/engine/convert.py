"""ChatGLM3 checkpoint -> a native Hugging Face ``GlmForCausalLM`` folder.

``python -m glmtui.engine.convert SRC DST`` writes what vLLM and plain
transformers (no remote code) can serve: config.json, safetensors weights in
the checkpoint's own dtype (renamed and split by loading.py's conversion),
generation_config.json with ChatGLM3's stop ids, and a fast tokenizer.json
built from ChatGLM3's SentencePiece ``tokenizer.model`` with a chat template
that reproduces :class:`ChatGLM3Format`. Before anything is kept, the new
tokenizer is checked against SentencePiece on sample text and a sample
conversation; a mismatch refuses the conversion.

The folder is written as ``DST.tmp`` and renamed into place with the
``.glmtui-complete`` marker already inside, so a crash never leaves a folder
that looks done. Errors: one line on stderr, exit status 1.

Two differences from ChatGLM3's own tokenizer are inherent to a tokenizer.json
plus a string template (any Hugging Face tokenizer has them):

* special-token text written literally inside a message (``<|user|>``,
  ``[gMASK]``, ``</s>``...) is read as the special token, where ChatGLM3Format
  encodes it as plain text; ``tokenizer(text, split_special_tokens=True)``
  encodes it as text;
* ``sop``/``eop`` are named ``<sop>``/``<eop>`` (same ids): added tokens are
  matched anywhere in text, and bare "sop"/"eop" would be cut out of words
  such as "Aesop" or "people".
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from .prompts import CHATGLM3_SPECIAL_TOKENS

COMPLETE_MARKER = ".glmtui-complete"
SHARD_BYTES = 2 << 30  # largest safetensors shard: bounds the memory a conversion holds at once

# ChatGLM3's specials as the fast tokenizer names them (ids piece_count + 0..8, in this order).
SPECIAL_NAMES = tuple({"sop": "<sop>", "eop": "<eop>"}.get(t, t) for t in CHATGLM3_SPECIAL_TOKENS)

# ChatGLM3Format.encode_conversation as a template. SentencePiece puts its dummy prefix "▁" in
# front of every piece of text it encodes, and ChatGLM3 encodes metadata + "\n" and the content
# separately: the tokenizer prefixes each run of text between special tokens, and the template
# writes a space before non-empty content, which becomes the content's own "▁". No piece can
# span "\n▁" (SentencePiece words start at "▁"), so the ids are those of the separate encodes.
# Role "tool" (OpenAI clients' tool results) is ChatGLM3's "observation".
CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "{%- set role = 'observation' if message['role'] == 'tool' else message['role'] -%}"
    "{%- set content = message['content'] if message['content'] is string else '' -%}"
    "{%- if loop.first and role == 'system' and tools -%}"
    "{%- set content = content ~ '\\n' ~ (tools | tojson(indent=4)) -%}"
    "{%- endif -%}"
    "<|{{ role }}|>"
    "{%- if message['metadata'] is defined and message['metadata'] -%}{{ message['metadata'] }}{%- endif -%}"
    "{{ '\\n' }}"
    "{%- if content -%}{{ ' ' ~ content }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

# Sample text the new tokenizer must encode exactly as tokenizer.model does.
SELF_CHECK_TEXTS = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，我是人工智能助手。清华大学和智谱AI发布了ChatGLM3-6B。",
    "def f(x):\n    return x  *  2\n\n\t\tindented\n",
    "  leading and trailing spaces   ",
    "\nstarts with a newline",
    "1234567890 3.14159 2026-11-29 0x1F",
    "emoji 😀🚀 and symbols ©®™ ∑∫√ ½ ①",
    "Aesop, people and the sop.",
    "     ",
    "aaaaaaaaaaaa ==== ---- ....",
)


class ConvertError(Exception):
    """A checkpoint that cannot be converted, with a message meant for the user."""


# ---------------------------------------------------------------- tokenizer.model (protobuf) reader


def _fields(data: bytes) -> dict[int, list]:
    """One protobuf message's fields by number: ints for varints, bytes for the rest (fixed sizes too)."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    value: int | bytes
    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            size = varint()
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ConvertError(f"tokenizer.model is not a SentencePiece model (protobuf wire type {wire})")
        fields.setdefault(number, []).append(value)
    return fields


def read_spm_proto(path: Path) -> SimpleNamespace:
    """The parts of SentencePiece's ModelProto a fast tokenizer is built from (field numbers and
    defaults as in sentencepiece_model.proto), without the protobuf package."""
    try:
        model = _fields(Path(path).read_bytes())
    except (IndexError, OSError) as exc:
        raise ConvertError(f"tokenizer.model cannot be read: {exc}") from exc

    def last(fields: dict, number: int, default):
        return fields[number][-1] if number in fields else default

    pieces = []
    for raw in model.get(1, []):
        piece = _fields(raw)
        score = struct.unpack("<f", last(piece, 2, b"\0\0\0\0"))[0]
        pieces.append(SimpleNamespace(piece=last(piece, 1, b"").decode("utf-8"), score=score, type=last(piece, 3, 1)))
    trainer = _fields(last(model, 2, b""))
    normalizer = _fields(last(model, 3, b""))
    return SimpleNamespace(
        pieces=pieces,
        trainer_spec=SimpleNamespace(
            model_type=last(trainer, 3, 1),
            byte_fallback=bool(last(trainer, 35, 0)),
            treat_whitespace_as_suffix=bool(last(trainer, 24, 0)),
            unk_id=last(trainer, 40, 0),
            unk_piece=last(trainer, 45, b"<unk>").decode("utf-8"),
        ),
        normalizer_spec=SimpleNamespace(
            name=last(normalizer, 1, b"").decode("utf-8"),
            precompiled_charsmap=last(normalizer, 2, b""),
            add_dummy_prefix=bool(last(normalizer, 3, 1)),
            remove_extra_whitespaces=bool(last(normalizer, 4, 1)),
            escape_whitespaces=bool(last(normalizer, 5, 1)),
        ),
    )


# ---------------------------------------------------------------- the fast tokenizer


def build_tokenizer(tokenizer_model: Path, context_length: int):
    """A ``PreTrainedTokenizerFast`` that encodes like ChatGLM3's tokenizer.model, with its
    specials at ids piece_count + 0..8, ``[gMASK] <sop>`` before plain text (as ChatGLM3's own
    ``tokenizer(text)``) and the ChatGLM3 chat template."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = read_spm_proto(tokenizer_model)
    if proto.trainer_spec.model_type != 2:
        raise ConvertError("tokenizer.model is not a BPE SentencePiece model, as ChatGLM3's is")
    if proto.trainer_spec.treat_whitespace_as_suffix:
        raise ConvertError("tokenizer.model treats whitespace as a suffix, which ChatGLM3's does not")
    vocab: dict[str, int] = {}
    for index, piece in enumerate(proto.pieces):
        vocab.setdefault(piece.piece, index)
    if len(vocab) != len(proto.pieces):
        raise ConvertError("tokenizer.model has duplicate pieces")
    # transformers' own SentencePiece -> tokenizers builder, following the model's normalizer spec;
    # legacy: every run of text between special tokens gets its dummy prefix, like each encode().
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    count = len(proto.pieces)
    backend.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in SPECIAL_NAMES])
    ids = [backend.token_to_id(name) for name in SPECIAL_NAMES]
    if ids != list(range(count, count + len(SPECIAL_NAMES))):
        raise ConvertError("tokenizer.model already holds one of ChatGLM3's special tokens as a piece")
    gmask, sop = ids[1], ids[3]
    eos = proto.pieces[2].piece if count > 2 else "</s>"
    backend.post_processor = processors.TemplateProcessing(
        single="[gMASK]:0 <sop>:0 $A:0",
        pair=f"[gMASK]:0 <sop>:0 $A:0 $B:1 {eos}:1",
        special_tokens=[("[gMASK]", gmask), ("<sop>", sop), (eos, backend.token_to_id(eos))],
    )
    unk = proto.trainer_spec.unk_piece
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, eos_token=eos, pad_token=unk,
        padding_side="left", model_max_length=context_length, clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def check_tokenizer(tokenizer, chat_format) -> None:
    """Refuse a tokenizer.json that does not encode like tokenizer.model (ChatGLM3Format)."""
    from .events import ChatMessage

    for text in SELF_CHECK_TEXTS:
        got = tokenizer.encode(text, add_special_tokens=False)
        if got != chat_format.encode_text(text):
            raise ConvertError(f"the fast tokenizer does not encode {text[:30]!r} like tokenizer.model; "
                               "this tokenizer.model cannot be converted")
    conversation = [ChatMessage("system", "You are helpful."), ChatMessage("user", "你好 hi"),
                    ChatMessage("assistant", " ok\n", metadata="tool"), ChatMessage("observation", "{}")]
    rendered = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content, "metadata": m.metadata} for m in conversation],
        add_generation_prompt=True, tokenize=False)
    if tokenizer.encode(rendered, add_special_tokens=False) != chat_format.encode_conversation(conversation):
        raise ConvertError("the chat template does not reproduce ChatGLM3's prompt for this tokenizer.model")


# ---------------------------------------------------------------- weights


def write_weights(tensors: dict, order: list[str], folder: Path, progress: Callable[[str], None]) -> None:
    """Safetensors shards of at most SHARD_BYTES (one file when it fits), read one shard at a time."""
    from safetensors.torch import save_file

    def size(name: str) -> int:
        entry = tensors[name]
        return entry.numel() * entry.dtype.itemsize

    shards: list[list[str]] = [[]]
    filled = 0
    for name in order:
        if shards[-1] and filled + size(name) > SHARD_BYTES:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += size(name)
    total = len(shards)
    names = ["model.safetensors"] if total == 1 else [
        f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
    for index, (filename, members) in enumerate(zip(names, shards, strict=True)):
        progress(f"writing {filename} ({index + 1}/{total})")
        part = {name: tensors[name][...].contiguous() for name in members}
        save_file(part, str(folder / filename), metadata={"format": "pt"})
        del part
    if total > 1:
        index_data = {"metadata": {"total_size": sum(size(n) for n in order)},
                      "weight_map": {name: filename for filename, members in zip(names, shards, strict=True)
                                     for name in members}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index_data, indent=2))


# ---------------------------------------------------------------- the folder


def _fsync_tree(folder: Path) -> None:
    """Files and folder on disk before the rename makes them the finished folder."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_native(src: Path, tmp: Path, progress: Callable[[str], None]) -> None:
    from transformers import GenerationConfig, GlmForCausalLM

    from . import checks
    from .checks import CheckFailed
    from .loading import (
        ModelLoadError,
        chatglm3_name,
        chatglm3_state_dict_to_glm,
        chatglm3_to_glm_config,
        is_chatglm3,
        read_config,
        read_weights,
        weight_files,
    )
    from .prompts import ChatGLM3Format

    try:
        config = read_config(src)
        if not is_chatglm3(config):
            raise ConvertError(f"{src} is not a ChatGLM3 checkpoint (config.json model_type is "
                               f"{config.get('model_type')!r}, not 'chatglm')")
        tokenizer_model = src / "tokenizer.model"
        if not tokenizer_model.is_file():
            raise ConvertError(f"{src} has no tokenizer.model (ChatGLM3's SentencePiece tokenizer)")
        try:
            chat_format = ChatGLM3Format(tokenizer_model)
        except Exception as exc:
            raise ConvertError(f"tokenizer.model cannot be read: {exc}") from exc
        glm_config = chatglm3_to_glm_config(config)
        if chat_format.vocab_size > glm_config.vocab_size:
            raise ConvertError(f"the tokenizer has {chat_format.vocab_size} tokens but the model only "
                               f"{glm_config.vocab_size}: tokenizer.model does not belong to these weights")
        progress("building the tokenizer")
        tokenizer = build_tokenizer(tokenizer_model, glm_config.max_position_embeddings)
        check_tokenizer(tokenizer, chat_format)

        fmt, files = weight_files(src)
        stored = read_weights(fmt, files, lambda stage, fraction: None)
        checks.check_size_against_files(config, sum(t.numel() for t in stored.values()))
        tensors = chatglm3_state_dict_to_glm(stored, glm_config)
        meta = checks.build_on_meta(lambda: GlmForCausalLM(glm_config))
        checks.compare_with_model({name: t.shape for name, t in tensors.items()}, meta, chatglm3_name)
    except (ModelLoadError, CheckFailed) as exc:
        raise ConvertError(str(exc)) from exc

    embeddings = tensors["model.embed_tokens.weight"]
    glm_config.architectures = ["GlmForCausalLM"]
    glm_config.dtype = embeddings.dtype  # the checkpoint's own, kept as it is
    glm_config.eos_token_id = list(chat_format.stop_token_ids)
    order = [name for name in meta.state_dict() if name in tensors]
    write_weights(tensors, order, tmp, progress)
    glm_config.save_pretrained(tmp)
    GenerationConfig(eos_token_id=list(chat_format.stop_token_ids), pad_token_id=glm_config.pad_token_id,
                     ).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp, save_jinja_files=False)  # the template inside tokenizer_config.json
    # The class every transformers release (4.x and 5.x, as in vLLM's environment) loads tokenizer.json with.
    settings = json.loads((tmp / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    (tmp / "tokenizer_config.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def convert(src: Path, dst: Path, progress: Callable[[str], None] = lambda stage: None) -> Path:
    """Write the native copy of ChatGLM3 folder ``src`` at ``dst`` (nothing to do when it is complete)."""
    from filelock import FileLock, Timeout

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if (dst / COMPLETE_MARKER).exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        lock = FileLock(str(dst.with_name(dst.name + ".lock")), timeout=24 * 3600)
        with lock:  # another glmtui converting the same folder: wait for it, then find it done
            if (dst / COMPLETE_MARKER).exists():
                return dst
            for stale in (tmp, dst):  # a crashed run's leftovers, never marked complete
                if stale.exists():
                    shutil.rmtree(stale)
            tmp.mkdir()
            _write_native(src, tmp, progress)
            (tmp / COMPLETE_MARKER).write_text(json.dumps({"source": str(src.resolve())}) + "\n")
            _fsync_tree(tmp)
            os.replace(tmp, dst)
    except Timeout as exc:
        raise ConvertError(f"another conversion of {src.name} holds {exc.lock_file}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"converted {src.name} to {dst}")
    return dst


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m glmtui.engine.convert CHATGLM3_FOLDER NATIVE_FOLDER", file=sys.stderr)
        return 2
    try:
        convert(Path(args[0]), Path(args[1]), lambda stage: print(stage, flush=True))
    except ConvertError as exc:
        print(f"conversion failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"conversion failed: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for the caller, never a traceback
        print(f"conversion failed: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
