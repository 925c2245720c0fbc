"""Tiny models and tokenizers built from config, for tests, examples and benchmarks (no downloads)."""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is AI? Artificial intelligence is the science of making machines that think.",
    "Hello, how are you? I am fine, thank you. What can I do for you today?",
    "合同方A与合同方B签订本合同。甲方应当按时付款，乙方应当按时交货。",
    "你好，你好吗？我很好，谢谢。人工智能是研究让机器思考的科学。",
    "<think> Let me reason step by step. </think> The answer is 42.",
    "user assistant system tool 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } : ; , . ! ?",
]
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(vocab_size: int = 400, chat_template: str = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer trained on a few sentences (English and Chinese), with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|eos|>"],
    )
    fast.chat_template = chat_template
    return fast


def tiny_deepseek_v3_config(vocab_size: int, **overrides):
    """DeepSeek-V3 architecture: 2 layers (1 dense, 1 MoE), hidden 64, 4 routed + 1 shared expert, MLA."""
    from transformers import DeepseekV3Config

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.2,  # logits of a useful scale, so that LoRA on a random model can learn
    )
    kwargs.update(overrides)
    return DeepseekV3Config(**kwargs)


def tiny_llama_config(vocab_size: int, **overrides):
    """Llama architecture (as R1-Distill-Llama, deepseek-llm, SmolLM2): 2 layers, hidden 64."""
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def save_tiny_causal_lm(path: str | Path, arch: str = "deepseek_v3", seed: int = 0) -> Path:
    """Build a tiny randomly initialised causal LM with its tokenizer and save both to ``path``."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer()
    make_config = {"deepseek_v3": tiny_deepseek_v3_config, "llama": tiny_llama_config}[arch]
    config = make_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
