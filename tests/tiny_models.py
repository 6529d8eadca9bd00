"""Tiny random-weight GLM models built offline for tests and benchmarks.

* ``build_native_glm`` — a transformers-native ``GlmForCausalLM`` folder with a
  small byte-level BPE tokenizer trained here and a GLM-4-style chat template.
* ``build_chatglm3`` — the same kind of weights in ChatGLM3's published layout
  (``model_type: chatglm``, fused QKV, ``pytorch_model-0000N-of-0000M.bin``
  shards or safetensors, SentencePiece ``tokenizer.model``), plus the
  identical weights saved natively for comparison.

Weights are random; what is real is every file format and every code path
that loads and runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "Hello, how are you today? I am a helpful assistant.",
    "The GPU has 24 GiB of memory and the model needs 13 GB in fp16.",
    "def main():\n    print('hello world')\n    return 0\n",
    "# Heading\n\n- a list item\n- another item\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
    "你好，我是人工智能助手。今天天气很好，我们去公园散步吧。",
    "清华大学和智谱AI发布了ChatGLM3-6B模型，支持工具调用和代码解释器。",
    "量化可以减少显存占用：int8 大约 8 GB，int4 大约 5.5 GB。",
    "The quick brown fox jumps over the lazy dog. 1234567890 !?.,;:",
    "Once upon a time there was a small language model that lived in a terminal.",
    "User asks a question; the assistant answers with streaming tokens.",
] * 4

GLM_SPECIALS = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_glm_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    head_dim: int = 16, ffn: int = 128, context: int = 2048, eos=None, tied: bool = False):
    """Shape of a tiny GLM; ``tied``: lm_head shares the embeddings (saved once)."""
    from transformers import GlmConfig

    return GlmConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=context,
        rms_norm_eps=1e-5,
        attention_bias=True,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=eos if eos is not None else 0,
    )


def _random_glm(config, seed: int):
    import torch
    from transformers import GlmForCausalLM

    torch.manual_seed(seed)
    model = GlmForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            # Larger-than-init weights make greedy output vary with the prompt.
            param.normal_(0.0, 0.2)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
    return model.eval()


def build_native_glm(dest: Path, seed: int = 0, **shape) -> Path:
    """A native GLM chat model folder: safetensors, tokenizer.json, chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=GLM_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=GLM_SPECIALS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)
    stops = [fast.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    config = tiny_glm_config(len(fast), eos=stops, **shape)
    config.pad_token_id = stops[0]
    model = _random_glm(config, seed)
    model.generation_config = GenerationConfig(eos_token_id=stops, pad_token_id=stops[0])
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def train_sentencepiece(dest: Path, vocab_size: int = 600) -> Path:
    import sentencepiece as spm

    dest.mkdir(parents=True, exist_ok=True)
    corpus = dest / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(dest / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        # Like ChatGLM3's tokenizer.model: keep newlines and runs of spaces (code).
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    corpus.unlink()
    (dest / "tokenizer.vocab").unlink(missing_ok=True)
    return dest / "tokenizer.model"


def glm_to_chatglm3_state_dict(state: dict, config) -> dict:
    """Native GLM tensor names -> ChatGLM3's published names (fused QKV)."""
    import torch

    out = {
        "transformer.embedding.word_embeddings.weight": state["model.embed_tokens.weight"],
        "transformer.encoder.final_layernorm.weight": state["model.norm.weight"],
        "transformer.output_layer.weight": state["lm_head.weight"],
    }
    for i in range(config.num_hidden_layers):
        src, dst = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        out[dst + "input_layernorm.weight"] = state[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = state[src + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            out[dst + f"self_attention.query_key_value.{kind}"] = torch.cat(
                [state[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0
            )
        out[dst + "self_attention.dense.weight"] = state[src + "self_attn.o_proj.weight"]
        out[dst + "mlp.dense_h_to_4h.weight"] = state[src + "mlp.gate_up_proj.weight"]
        out[dst + "mlp.dense_4h_to_h.weight"] = state[src + "mlp.down_proj.weight"]
        out[dst + "self_attention.rotary_pos_emb.inv_freq"] = torch.ones(config.head_dim // 4)
    return out


def build_chatglm3(dest: Path, seed: int = 0, shards: int = 2, fmt: str = "bin", native_copy: Path | None = None,
                   rope_ratio: float = 1.0, never_stop: bool = False, **shape) -> Path:
    """A ChatGLM3-layout checkpoint; optionally the same weights saved natively too."""
    import torch

    dest = Path(dest)
    sp_model = train_sentencepiece(dest)
    import sentencepiece

    pieces = sentencepiece.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
    vocab = pieces + 9 + 3  # 9 specials, padded like the real padded_vocab_size
    config = tiny_glm_config(vocab, **shape)
    config.rope_parameters["rope_theta"] = 10000.0 * rope_ratio
    model = _random_glm(config, seed)
    if never_stop:
        # Zero logits for eos, <|user|> and <|observation|> while others are large: replies run to max length.
        import torch

        with torch.no_grad():
            for stop in (2, pieces + 6, pieces + 8):
                model.lm_head.weight[stop].zero_()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    chatglm = glm_to_chatglm3_state_dict(state, config)
    chatglm_config = {
        "_name_or_path": "THUDM/chatglm3-6b",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig"},
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": config.intermediate_size,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": config.hidden_size,
        "kv_channels": config.head_dim,
        "layernorm_epsilon": config.rms_norm_eps,
        "multi_query_attention": True,
        "multi_query_group_num": config.num_key_value_heads,
        "num_attention_heads": config.num_attention_heads,
        "num_layers": config.num_hidden_layers,
        "original_rope": True,
        "padded_vocab_size": vocab,
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": config.max_position_embeddings,
        "use_cache": True,
        "torch_dtype": "float32",
        "tie_word_embeddings": False,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    if rope_ratio != 1.0:
        chatglm_config["rope_ratio"] = rope_ratio
    (dest / "config.json").write_text(json.dumps(chatglm_config, indent=2))
    names = sorted(chatglm)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for index in range(shards):
        part = {n: chatglm[n] for n in names[index * per_shard : (index + 1) * per_shard]}
        if fmt == "bin":
            filename = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
            torch.save(part, dest / filename)
        else:
            from safetensors.torch import save_file

            filename = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, str(dest / filename), metadata={"format": "pt"})
        weight_map.update({n: filename for n in part})
    index_name = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (dest / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    (dest / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}})
    )
    if native_copy is not None:
        model.save_pretrained(native_copy, safe_serialization=True)
    return dest


# ------------------------------------------------------------------ the newer GLM architectures
#
# GLM-4-0414 / GLM-Z1 (Glm4ForCausalLM, reasoning in <think>...</think>), GLM-4.7-Flash
# (Glm4MoeLiteForCausalLM: routed + shared experts, MLA attention) and GLM-4.5 / -Air
# (Glm4MoeForCausalLM: routed + shared experts, GQA).  Shapes are tiny; what is real is the
# class, its config keys, the checkpoint names (experts saved as transformers 5 saves them)
# and the chat template's handling of reasoning.

THINK_SPECIALS = GLM_SPECIALS + ["<think>", "</think>"]
#: GLM-Z1 / GLM-4.5 style: an assistant turn of the history keeps only what follows
#: ``</think>`` (reasoning is not sent back); ``enable_thinking=False`` closes an empty
#: reasoning block at once (GLM-4.5's switch); otherwise the model opens ``<think>`` itself.
THINKING_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['role'] == 'assistant' %}{{ m['content'].split('</think>')[-1].strip() }}"
    "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>\n{% endif %}{% endif %}"
)
#: GLM-4.7's generation prompt: the reply starts inside an open block; the switch closes it instead.
INSIDE_THINKING_CHAT_TEMPLATE = THINKING_CHAT_TEMPLATE.split("{% if add_generation_prompt %}")[0] + (
    "{% if add_generation_prompt %}<|assistant|>"
    "{{ '</think>' if (enable_thinking is defined and not enable_thinking) else '<think>' }}{% endif %}"
)


def _glm_tokenizer(dest: Path, specials: list[str], template: str):
    """A byte-level BPE tokenizer trained on CORPUS with ``specials``, saved into ``dest``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    fast.chat_template = template
    fast.save_pretrained(dest)
    return fast


def _randomize(model, seed: int):
    """Weights larger than init (greedy output varies with the prompt); every norm weight 1."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif param.is_floating_point():
                param.normal_(0.0, 0.2)
    return model.eval()


def _save_chat_model(dest: Path, seed: int, template: str, specials: list[str], make_config) -> Path:
    """Tokenizer + ``make_config(vocab_size, stops)`` -> random model saved as safetensors."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fast = _glm_tokenizer(dest, specials, template)
    stops = [fast.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    config = make_config(len(fast), stops)
    model = _randomize(AutoModelForCausalLM.from_config(config), seed)
    model.generation_config = GenerationConfig(eos_token_id=stops, pad_token_id=stops[0])
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def build_glm4_thinking(dest: Path, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
                        kv_heads: int = 2, head_dim: int = 16, ffn: int = 128, context: int = 2048) -> Path:
    """GLM-Z1-9B-0414 shaped small: ``Glm4ForCausalLM`` (four norms per layer, fused gate_up,
    partial rotary) with ``<think>``/``</think>`` tokens and a reasoning chat template."""
    from transformers import Glm4Config

    def config(vocab, stops):
        return Glm4Config(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
            max_position_embeddings=context, rms_norm_eps=1e-5, attention_bias=True,
            pad_token_id=stops[0], bos_token_id=None, eos_token_id=stops,
        )

    return _save_chat_model(dest, seed, THINKING_CHAT_TEMPLATE, THINK_SPECIALS, config)


def build_glm4_moe_lite(dest: Path, seed: int = 0, hidden: int = 64, layers: int = 3, heads: int = 4,
                        experts: int = 8, context: int = 2048) -> Path:
    """GLM-4.7-Flash shaped small: ``Glm4MoeLiteForCausalLM``: the first layer dense, the rest
    routed experts (fused 3-D ``experts.gate_up_proj``/``down_proj``) + one shared expert, and MLA
    attention (q through a rank-``q_lora_rank`` bottleneck; the cache holds the
    ``kv_lora_rank + qk_rope_head_dim`` latent per token, not per-head K/V)."""
    from transformers import Glm4MoeLiteConfig

    def config(vocab, stops):
        return Glm4MoeLiteConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=hidden // 2,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            n_shared_experts=1, n_routed_experts=experts, num_experts_per_tok=2, n_group=1, topk_group=1,
            kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=32,
            max_position_embeddings=context, rms_norm_eps=1e-5, tie_word_embeddings=False,
            pad_token_id=stops[0], bos_token_id=None, eos_token_id=stops,
        )

    return _save_chat_model(dest, seed, THINKING_CHAT_TEMPLATE, THINK_SPECIALS, config)


def build_glm4_moe(dest: Path, seed: int = 0, hidden: int = 64, layers: int = 3, heads: int = 4, kv_heads: int = 2,
                   head_dim: int = 16, experts: int = 8, context: int = 2048) -> Path:
    """GLM-4.5 / GLM-4.5-Air shaped small: ``Glm4MoeForCausalLM``: ``first_k_dense_replace`` dense
    layers, then routed experts + one shared expert; GQA attention with q/k norms, partial rotary."""
    from transformers import Glm4MoeConfig

    def config(vocab, stops):
        return Glm4MoeConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=hidden // 2,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
            n_shared_experts=1, n_routed_experts=experts, num_experts_per_tok=2, first_k_dense_replace=1,
            n_group=1, topk_group=1, use_qk_norm=True, attention_bias=True,
            max_position_embeddings=context, rms_norm_eps=1e-5, tie_word_embeddings=False,
            pad_token_id=stops[0], bos_token_id=None, eos_token_id=stops,
        )

    return _save_chat_model(dest, seed, THINKING_CHAT_TEMPLATE, THINK_SPECIALS, config)


#: Every architecture a tiny model is built for: name -> builder(dest) (tests iterate over it).
ARCHITECTURES = {
    "glm": lambda dest: build_native_glm(dest),
    "chatglm3": lambda dest: build_chatglm3(dest, fmt="safetensors"),
    "glm4-thinking": lambda dest: build_glm4_thinking(dest),
    "glm4-moe-lite": lambda dest: build_glm4_moe_lite(dest),
    "glm4-moe": lambda dest: build_glm4_moe(dest),
}
