"""What ``glmtui history import`` reads, turned into conversations for the store.

Accepted shapes (each one JSON value: a line of a JSON Lines file, or a whole file):

* glmtui's own history line: ``{"glmtui_history": 1, "id": ..., "messages": [...]}``
  (and the per-conversation JSON export, ``"format": "glmtui-conversation"``);
* OpenAI-style chat: ``{"messages": [{"role", "content"}, ...]}`` (optional ``title``,
  ``model``), a bare list of such messages, or a list of conversations. ``tool``
  and ``function`` messages become observations, ``developer`` a system message,
  an assistant's ``tool_calls`` one assistant message per call (metadata: the
  function's name, content: its arguments); of list contents only text parts are kept;
* ChatGLM3's history (what its ``model.chat``/``stream_chat`` return and its web
  demos keep in session state): a list of ``{"role", "content", "metadata"}``
  dicts (a system entry's ``tools`` list is not kept), also as ``{"history": [...]}``,
  and the older ``[[query, response], ...]`` pairs (ChatGLM-6B/2, Gradio's chatbot).

A leading system message of a foreign conversation becomes its system prompt.
Conversations without a glmtui id get one from their content (a hash), so
importing the same file twice adds nothing the second time.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Optional

from glmtui.store.records import ROLES, STATUSES, dumps

HISTORY_VERSION = 1  # the "glmtui_history" value this glmtui writes and reads
_EXPORT_FORMAT = "glmtui-conversation"  # the per-conversation JSON export

_ROLE_ALIASES = {"tool": "observation", "function": "observation", "ipython": "observation",
                 "developer": "system"}
_TEXT_PARTS = ("text", "input_text", "output_text")


class FormatError(ValueError):
    """The value is not a conversation glmtui can import; ``str(err)`` says why in one line."""


def conversations_from_value(value: Any) -> list[dict]:
    """The conversations one JSON value holds, each in the shape
    :func:`glmtui.store.exchange.insert_conversations` reads (with ``uid``)."""
    if isinstance(value, dict):
        if "glmtui_history" in value:
            return [_from_glmtui(value, own_id=True)]
        if value.get("format") == _EXPORT_FORMAT:
            return [_from_glmtui(value, own_id=False)]
        for key in ("messages", "history"):
            if key in value:
                return [_from_foreign(value[key], value)]
        if isinstance(value.get("conversations"), list):
            return _many(value["conversations"])
        raise FormatError("a JSON object without \"messages\" (or \"glmtui_history\")")
    if isinstance(value, list):
        if not value:
            raise FormatError("an empty list")
        if all(isinstance(x, dict) and "role" in x for x in value):
            return [_from_foreign(value, {})]
        if all(_is_pair(x) for x in value):
            return [_from_foreign(value, {})]
        return _many(value)
    raise FormatError(f"a JSON {type(value).__name__}, not a conversation")


def _many(items: list) -> list[dict]:
    out: list[dict] = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, (dict, list)):
            raise FormatError(f"item {n} is a JSON {type(item).__name__}, not a conversation or message")
        try:
            out += conversations_from_value(item)
        except FormatError as err:
            raise FormatError(f"conversation {n}: {err}") from None
    return out


def _is_pair(x: Any) -> bool:
    return isinstance(x, list) and len(x) == 2 and all(v is None or isinstance(v, str) for v in x)


# ------------------------------------------------------------------ glmtui


def _from_glmtui(value: dict, *, own_id: bool) -> dict:
    if own_id:
        version = value["glmtui_history"]
        if not isinstance(version, int) or version < 1:
            raise FormatError(f"\"glmtui_history\" must be a positive integer, not {version!r}")
        if version > HISTORY_VERSION:
            raise FormatError(f"written by a newer glmtui (glmtui_history {version}; this one reads "
                              f"up to {HISTORY_VERSION})")
    title = _text(value.get("title"), "title")
    messages = value.get("messages")
    if not isinstance(messages, list):
        raise FormatError("\"messages\" must be a list")
    msgs = []
    for n, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            raise FormatError(f"message {n} is not an object")
        role = m.get("role")
        if role not in ROLES:
            raise FormatError(f"message {n}: role must be one of {', '.join(ROLES)}, not {role!r}")
        status = m.get("status") or "complete"
        if status not in STATUSES:
            raise FormatError(f"message {n}: status must be one of {', '.join(STATUSES)}, not {status!r}")
        stats = m.get("stats")
        if stats is not None and not isinstance(stats, dict):
            raise FormatError(f"message {n}: \"stats\" must be an object or null")
        msgs.append({
            "role": role,
            "content": _text(m.get("content"), f"message {n}: content"),
            "status": status,
            "metadata": _text(m.get("metadata"), f"message {n}: metadata"),
            "stats": stats,
            "created_at": m.get("created_at"),
            "reasoning": _text(m.get("reasoning"), f"message {n}: reasoning"),
        })
    conv = {
        "title": title,
        "model": _optional_text(value.get("model"), "model"),
        "system_prompt": _text(value.get("system_prompt"), "system_prompt"),
        "params": value.get("params") or {},
        "created_at": value.get("created_at"),
        "updated_at": value.get("updated_at"),
        "messages": msgs,
        "kind": value.get("kind") if value.get("kind") in ("chat", "completion") else "chat",
    }
    if not isinstance(conv["params"], dict):
        raise FormatError("\"params\" must be an object")
    uid = value.get("id") if own_id else None
    if own_id and (not isinstance(uid, str) or not uid.strip()):
        raise FormatError("\"id\" must be a non-empty string")
    conv["uid"] = uid or _content_id(conv)
    return conv


# ----------------------------------------------------------------- foreign


def _from_foreign(messages: Any, value: dict) -> dict:
    """An OpenAI-style or ChatGLM3 conversation: its messages and what *value* says about it."""
    if not isinstance(messages, list):
        raise FormatError("\"messages\" must be a list")
    msgs: list[dict] = []
    for n, m in enumerate(messages, 1):
        if _is_pair(m):
            query, response = m
            if query:
                msgs.append(_msg("user", query))
            if response is not None:
                msgs.append(_msg("assistant", response))
        elif isinstance(m, dict):
            msgs += _foreign_message(m, n)
        else:
            raise FormatError(f"message {n} is neither a {{role, content}} object nor a [query, response] pair")
    system_prompt = ""
    if msgs and msgs[0]["role"] == "system":
        system_prompt = msgs.pop(0)["content"]
    title = value.get("title")
    if not isinstance(title, str):
        title = ""
    if not title.strip():
        first = next((m["content"] for m in msgs if m["role"] == "user" and m["content"].strip()), "")
        title = _make_title(first) if first else "Imported conversation"
    conv: dict[str, Any] = {
        "title": title,
        "model": value.get("model") if isinstance(value.get("model"), str) else None,
        "system_prompt": system_prompt,
        "params": {},
        "created_at": value.get("created_at", value.get("create_time")),
        "updated_at": value.get("updated_at", value.get("update_time")),
        "messages": msgs,
    }
    conv["uid"] = _content_id(conv)
    return conv


def _foreign_message(m: dict, n: int) -> list[dict]:
    role = m.get("role")
    if not isinstance(role, str):
        raise FormatError(f"message {n}: \"role\" must be a string")
    role = _ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise FormatError(f"message {n}: unknown role {m.get('role')!r} (known: system, user, assistant, "
                          "observation, tool, function, developer)")
    content = _content(m.get("content"), n)
    metadata = m.get("metadata")
    if metadata is None and role == "observation" and isinstance(m.get("name"), str):
        metadata = m["name"]
    out = []
    calls = m.get("tool_calls") if role == "assistant" else None
    if content or not calls:
        out.append(_msg(role, content, _text(metadata, f"message {n}: metadata")))
        if role == "assistant" and isinstance(m.get("reasoning_content"), str):  # vLLM / SGLang / DeepSeek
            out[-1]["reasoning"] = m["reasoning_content"]
    for call in calls or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise FormatError(f"message {n}: a tool call without a function name")
        args = fn.get("arguments", "")
        out.append(_msg("assistant", args if isinstance(args, str) else dumps(args), fn["name"]))
    return out


def _content(content: Any, n: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    if isinstance(content, dict):  # a ChatGLM3 tool call as returned by model.chat
        return dumps(content)
    raise FormatError(f"message {n}: content must be text, not a JSON {type(content).__name__}")


def _msg(role: str, content: str, metadata: str = "") -> dict:
    return {"role": role, "content": content, "status": "complete", "metadata": metadata,
            "stats": None, "created_at": None}


# ----------------------------------------------------------------- helpers


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FormatError(f"{what} must be text, not a JSON {type(value).__name__}")
    return value


def _optional_text(value: Any, what: str) -> Optional[str]:
    return None if value is None else _text(value, what)


def _make_title(text: str, limit: int = 40) -> str:
    line = re.sub(r"\s+", " ", text).strip()
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _content_id(conv: dict) -> str:
    """An id from what the conversation says (system prompt, roles, tool names,
    texts): the same conversation imported again gets the same one."""
    key = dumps([conv["system_prompt"], [[m["role"], m["metadata"], m["content"]] for m in conv["messages"]]])
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
