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


ENCODER_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_encoder_tokenizer(extra_corpus: list[str] | None = None, vocab_size: int = 300):
    """A BERT-style WordPiece tokenizer ([CLS] text [SEP], CJK characters split one by one) trained on the fly."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=ENCODER_SPECIAL_TOKENS,
                                        show_progress=False)
    tok.train_from_iterator((_CORPUS + list(extra_corpus or [])) * 4, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]")


def save_tiny_encoder(path: str | Path, extra_corpus: list[str] | None = None, seed: int = 0) -> Path:
    """A tiny randomly initialised BERT (2 layers, hidden 64) with its WordPiece tokenizer, saved to ``path``."""
    import torch
    from transformers import BertConfig, BertModel

    path = Path(path)
    tokenizer = build_encoder_tokenizer(extra_corpus)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                        initializer_range=0.2)  # a useful scale for LoRA on a random model
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


TOY_CLASSES = {
    "greet": "hello how are you fine thank you today".split(),
    "ai": "artificial intelligence science machines think answer reason".split(),
    "contract": "合同 甲方 乙方 付款 交货 签订 按时".split(),
}
_TOY_NOISE = "the a is what can do for me".split()
_TOY_PEOPLE = [["alice", "smith"], ["bob"], ["zyxwvut", "jones"]]
_TOY_PLACES = [list("北京"), list("上海"), ["paris"]]


def toy_classification_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable text-classification set: each text mixes words of its class with shared filler words."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(TOY_CLASSES)[i % len(TOY_CLASSES)]
        words = rng.sample(TOY_CLASSES[label], 3) + rng.sample(_TOY_NOISE, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def toy_ner_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable BIO set: person names (some split into several sub-tokens) and places (Chinese by character)."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for kind, names in (("PER", _TOY_PEOPLE), ("LOC", _TOY_PLACES)):
            filler = rng.sample(_TOY_NOISE, 2)
            name = rng.choice(names)
            tokens += filler + name
            tags += ["O", "O", f"B-{kind}", *[f"I-{kind}"] * (len(name) - 1)]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    import json

    path = Path(path)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_chat_jsonl(path: str | Path, pairs: list[tuple[str, str]], n: int | None = None) -> Path:
    """``n`` one-turn ``messages`` rows cycling through ``(question, answer)`` pairs (default: each pair once)."""
    n = len(pairs) if n is None else n
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in (pairs[i % len(pairs)] for i in range(n))]
    return write_jsonl(path, rows)


def save_tiny_hf_classifier(path: str | Path, num_labels: int = 3, seed: int = 0) -> Path:
    """A plain transformers BertForSequenceClassification (2 layers, hidden 32) with its tokenizer, saved to ``path``.

    The head's weights are scaled up so that classes are separated by clear margins, as in a trained
    classifier (export tests compare predictions, which near-ties would make flaky).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = Path(path)
    tokenizer = build_encoder_tokenizer()
    labels = [f"label_{i}" for i in range(num_labels)]
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                        num_labels=num_labels, id2label=dict(enumerate(labels)),
                        label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_toy_labelled_run(model_dir: str | Path, root: str | Path, task: str = "classification",
                           steps: int = 60, **task_settings) -> Path:
    """A finished LoRA run (``root/run``) of a ``classification`` or ``token_classification`` task on the toy
    sets above, for deployment tests: no evaluation during training, learning rate high enough that a few
    steps separate the classes."""
    from dstune.config import validate_config
    from dstune.train.recipe import train

    root = Path(root)
    rows = toy_ner_rows(48) if task == "token_classification" else toy_classification_rows(72)
    data = write_jsonl(root / f"{task}.jsonl", rows)
    config = validate_config({
        "model": {"name": str(model_dir)},
        "task": {"type": task, **task_settings},
        "data": {"train": str(data), "eval_split": 0.25, "max_length": 32},
        "method": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": steps, "batch_size": 8, "learning_rate": 1e-2, "eval_strategy": "no",
                     "logging_steps": 10, "warmup_ratio": 0.0},
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(root / "run"),
    })
    train(config, log=lambda *a: None)
    return root / "run"
