"""Prompt formats and incremental detokenization on the real tiny tokenizers."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from glmtui.engine.events import ChatMessage
from glmtui.engine.prompts import (
    ChatGLM3Format,
    ChatTemplateFormat,
    IncrementalDetokenizer,
    PromptError,
    encode_completion,
)


@pytest.fixture(scope="module")
def glm3(chatglm3_dir):
    return ChatGLM3Format(chatglm3_dir / "tokenizer.model")


def test_chatglm3_special_ids_follow_the_sentencepiece_vocabulary(glm3):
    n = glm3.piece_count
    assert glm3.special_ids["[gMASK]"] == n + 1
    assert glm3.special_ids["sop"] == n + 3
    assert glm3.special_ids["<|user|>"] == n + 6
    assert glm3.stop_token_ids == [2, n + 6, n + 8]  # eos, <|user|>, <|observation|>


def test_chatglm3_prompt_layout(glm3):
    msgs = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "你好"),
        ChatMessage("assistant", "Hello!"),
        ChatMessage("observation", '{"temp": 20}', metadata="weather"),
        ChatMessage("user", "thanks"),
    ]
    s = glm3.special_ids
    enc = glm3.encode_text
    expected = [s["[gMASK]"], s["sop"]]
    expected += [s["<|system|>"]] + enc("\n") + enc("Be brief.")
    expected += [s["<|user|>"]] + enc("\n") + enc("你好")
    expected += [s["<|assistant|>"]] + enc("\n") + enc("Hello!")
    expected += [s["<|observation|>"]] + enc("weather\n") + enc('{"temp": 20}')
    expected += [s["<|user|>"]] + enc("\n") + enc("thanks")
    expected += [s["<|assistant|>"]]
    assert glm3.encode_conversation(msgs) == expected


def test_chatglm3_tools_are_appended_to_the_system_prompt(glm3):
    tools = [{"name": "weather", "description": "天气", "parameters": {}}]
    with_tools = glm3.encode_conversation([ChatMessage("system", "sys"), ChatMessage("user", "q")], tools=tools)
    assert "sys\n[\n    {\n        \"name\": \"weather\"" in glm3.decode(with_tools)
    assert "天气" in glm3.decode(with_tools)


@pytest.mark.parametrize("text", ["今天天气真不错", "def fib(n):\n    ", "<|user|> is text here"])
def test_chatglm3_completion_prompt_is_prefix_and_text(glm3, chatglm3_dir, text):
    # The facts: ChatGLM3's tokenizer puts get_prefix_tokens() = [gMASK] sop before any
    # encoded text (build_inputs_with_special_tokens); special ids follow the piece count.
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(chatglm3_dir / "tokenizer.model"))
    n = sp.get_piece_size()
    ids = encode_completion(glm3, text)
    assert ids == [n + 1, n + 3] + list(sp.encode(text))
    assert not set(ids[2:]) & set(glm3.special_ids.values())  # no role tokens, even from "<|user|>"
    assert glm3.completion_stop_token_ids == [2]


def _with_post_processor(tok, single: str):
    from tokenizers import processors

    specials = [(t, tok.convert_tokens_to_ids(t)) for t in ("[gMASK]", "<sop>", "<|endoftext|>")]
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    return tok


def test_chat_template_completion_uses_the_tokenizers_own_prefix(native_glm):
    tok = _with_post_processor(AutoTokenizer.from_pretrained(native_glm), "[gMASK] <sop> $A")
    fmt = ChatTemplateFormat(tok)
    plain = tok.encode("Once upon", add_special_tokens=False)
    assert encode_completion(fmt, "Once upon") == [tok.convert_tokens_to_ids("[gMASK]"),
                                                   tok.convert_tokens_to_ids("<sop>")] + plain


def test_chat_template_completion_drops_an_appended_eos(native_glm):
    tok = _with_post_processor(AutoTokenizer.from_pretrained(native_glm), "$A <|endoftext|>")
    fmt = ChatTemplateFormat(tok)
    assert encode_completion(fmt, "Once upon") == tok.encode("Once upon", add_special_tokens=False)
    assert fmt.completion_stop_token_ids == [tok.eos_token_id]


def test_base_tokenizer_without_template_does_completion_only(native_glm):
    tok = AutoTokenizer.from_pretrained(native_glm)
    tok.chat_template = None
    fmt = ChatTemplateFormat(tok, require_template=False)
    assert encode_completion(fmt, "abc") == tok("abc")["input_ids"]
    with pytest.raises(PromptError, match="completion mode"):
        fmt.encode_conversation([ChatMessage("user", "hi")])


@pytest.mark.parametrize(
    "msgs, error",
    [
        ([], "empty"),
        ([ChatMessage("user", "a"), ChatMessage("system", "b"), ChatMessage("user", "c")], "first"),
        ([ChatMessage("user", "a"), ChatMessage("assistant", "b")], "last message"),
    ],
)
def test_conversations_a_model_cannot_take(glm3, msgs, error):
    with pytest.raises(PromptError, match=error):
        glm3.encode_conversation(msgs)


def test_chat_template_format(native_glm):
    tok = AutoTokenizer.from_pretrained(native_glm)
    fmt = ChatTemplateFormat(tok, [tok.convert_tokens_to_ids("<|user|>")])
    ids = fmt.encode_conversation([ChatMessage("system", "S"), ChatMessage("user", "hi")])
    assert tok.decode(ids) == "[gMASK]<sop><|system|>\nS<|user|>\nhi<|assistant|>\n"
    assert fmt.stop_token_ids == [tok.eos_token_id, tok.convert_tokens_to_ids("<|user|>")]


def test_tokenizer_without_template_is_not_a_chat_model(native_glm):
    tok = AutoTokenizer.from_pretrained(native_glm)
    tok.chat_template = None
    with pytest.raises(PromptError, match="no chat template"):
        ChatTemplateFormat(tok)


class CountingDecode:
    def __init__(self, decode):
        self.decode = decode
        self.longest = 0

    def __call__(self, ids):
        self.longest = max(self.longest, len(ids))
        return self.decode(ids)


@pytest.mark.parametrize("text", ["你好，我是人工智能助手。今天天气很好！🙂",
                                  "Hello world\n\n```python\nprint(1)\n```"])
def test_incremental_detokenizer_chatglm3_byte_fallback(glm3, text):
    ids = glm3.encode_text(text * 20)
    decode = CountingDecode(glm3.decode)
    detok = IncrementalDetokenizer(decode)
    pieces = [detok.push([i]) for i in ids] + [detok.flush()]
    assert "".join(pieces) == glm3.decode(ids)
    assert not any("\ufffd" in p for p in pieces)
    assert decode.longest <= IncrementalDetokenizer.MAX_PENDING + 1  # a short window, not the whole reply


def test_incremental_detokenizer_byte_level_bpe(native_glm):
    tok = AutoTokenizer.from_pretrained(native_glm)
    text = "量化可以减少显存占用：int8 大约 8 GB。 Emoji 🚀 too. " * 30
    ids = tok.encode(text, add_special_tokens=False)
    decode = CountingDecode(lambda x: tok.decode(x, skip_special_tokens=True))
    detok = IncrementalDetokenizer(decode)
    out = "".join(detok.push([i]) for i in ids) + detok.flush()
    assert out == text
    assert decode.longest <= IncrementalDetokenizer.MAX_PENDING + 1


def test_catalogue_marks_chatglm3_base_for_completion_mode():
    from glmtui import catalog

    assert catalog.get("chatglm3-6b-base").kind == "base"
    assert {e.key for e in catalog.CATALOG if e.kind == "base"} == {"chatglm3-6b-base"}


def test_chatglm3_decode_can_keep_role_tokens(glm3):
    # PROMPT.md: a tool-mode reply may be "text<|assistant|>tool_name\n```python\n...```".
    s = glm3.special_ids
    ids = glm3.encode_text("Let me look.") + [s["<|assistant|>"]] + glm3.encode_text("weather\ntool_call()")
    assert glm3.decode(ids, keep_roles=True) == "Let me look.<|assistant|>weather\ntool_call()"
    assert glm3.decode(ids) == "Let me look. weather\ntool_call()"  # the default still drops role tokens
    assert glm3.decode([s["[gMASK]"], s["sop"]] + glm3.encode_text("a"), keep_roles=True) == "a"
