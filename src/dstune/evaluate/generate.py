"""Evaluation examples for generation, batched answers from a causal LM, and reference perplexity.

Prompts are rendered with the tokenizer's chat template (the one the run trained with, saved
beside its weights) and **left-padded**: a right-padded batch would make the model continue after
pad tokens, so a prediction would depend on which other prompts share its batch. Batches are
sorted by length so that little padding is needed at all, and the original order is restored.
Forward passes pass explicit position ids, so a padded row scores exactly as it does alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dstune.config.evaluation import GenerationSettings
from dstune.data.formats import RowError, detect_format, to_messages
from dstune.data.readers import Record
from dstune.errors import DataError

Progress = Callable[[int], None]  # called with the number of examples just finished


@dataclass(frozen=True)
class Example:
    """One evaluation example: the conversation up to the answer, and the reference answer."""

    where: str
    prompt: list[dict]
    reference: str

    @property
    def input(self) -> str:
        """The last user message (what a reader of predictions.jsonl wants to see)."""
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else ""


def examples_from_records(records: list[Record], system_prompt: str | None = None) -> list[Example]:
    """Chat examples from SFT rows (messages, Alpaca, ShareGPT); the last assistant turn is the reference."""
    if not records:
        return []
    fmt = _format_of(records[0])
    examples = []
    for record in records:
        try:
            messages = to_messages(record.data, fmt, system_prompt)
        except RowError as exc:
            raise DataError(str(exc), where=record.where(), hint="fix the row; eval needs the same formats as train")
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        examples.append(Example(record.where(), messages[:last], messages[last]["content"]))
    return examples


def _format_of(record: Record) -> str:
    try:
        fmt = detect_format(record.data)
    except RowError as exc:
        raise DataError(str(exc), where=record.where()) from None
    if fmt == "text":
        raise DataError(
            "raw text rows have no reference answer to score a generation against",
            where=record.where(),
            hint="evaluate on chat rows (messages, Alpaca instruction/output or ShareGPT conversations)",
        )
    return fmt


def render_prompts(tokenizer, prompts: list[list[dict]]) -> list[str]:
    """Each conversation rendered with the chat template, ending with the assistant's turn opener."""
    return [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]


def generate_answers(model, tokenizer, prompts: list[list[dict]], settings: GenerationSettings,
                     progress: Progress | None = None) -> list[str]:
    """Batched greedy (temperature 0) or sampled answers, cut at the first stop string."""
    import torch

    texts = render_prompts(tokenizer, prompts)
    config = _generation_config(model, tokenizer, settings)
    answers: list[str] = [""] * len(texts)
    torch.manual_seed(settings.seed)
    with _padding_side(tokenizer, "left"):
        for batch in _length_sorted_batches(tokenizer, texts, settings.batch_size):
            inputs = tokenizer([texts[i] for i in batch], add_special_tokens=False, padding=True, return_tensors="pt")
            inputs = {k: v.to(model.device) for k, v in inputs.items()}
            with torch.inference_mode():
                output = model.generate(**inputs, generation_config=config, tokenizer=tokenizer)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            for i, ids in zip(batch, new_tokens):
                answers[i] = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), settings.stop)
            if progress:
                progress(len(batch))
    return answers


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to (without) the earliest stop string."""
    cut = min((text.find(s) for s in stops if s and s in text), default=len(text))
    return text[:cut].strip()


def _generation_config(model, tokenizer, settings: GenerationSettings):
    """A fresh GenerationConfig: the checkpoint's sampling defaults must not leak into an evaluation."""
    from transformers import GenerationConfig

    eos = getattr(model.generation_config, "eos_token_id", None)
    eos_ids = {*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None}
    sample = settings.temperature > 0
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=sample,
        **({"temperature": settings.temperature, "top_p": settings.top_p} if sample else {}),
        eos_token_id=sorted(eos_ids) or None,
        pad_token_id=pad_id(tokenizer),
        stop_strings=settings.stop or None,
    )


def pad_id(tokenizer) -> int:
    """The pad token id, falling back to EOS (many causal LMs ship without a pad token)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


class _padding_side:
    """Context manager: the tokenizer pads on ``side`` inside, as before outside."""

    def __init__(self, tokenizer, side: str):
        self.tokenizer, self.side = tokenizer, side

    def __enter__(self):
        pad_id(self.tokenizer)
        self.saved, self.tokenizer.padding_side = self.tokenizer.padding_side, self.side

    def __exit__(self, *exc):
        self.tokenizer.padding_side = self.saved


def _length_sorted_batches(tokenizer, texts: list[str], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``texts`` in batches of similar token length, longest first (OOM shows up at once)."""
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start: start + batch_size]


def position_ids(attention_mask):
    """Positions counted over real tokens only, so left- and right-padded rows see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def reference_nll(model, tokenizer, prompts: list[list[dict]], references: list[str], *, batch_size: int = 8,
                  max_length: int = 4096, padding_side: str = "right") -> list[tuple[float, int]]:
    """``(summed negative log-likelihood, token count)`` of each reference given its prompt (teacher forcing)."""
    import torch

    rows = [_prompt_and_answer_ids(tokenizer, text, ref, max_length)
            for text, ref in zip(render_prompts(tokenizer, prompts), references)]
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    for start in range(0, len(rows), batch_size):
        batch = rows[start: start + batch_size]
        ids, mask, labels = _pad_rows(batch, pad_id(tokenizer), padding_side)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           position_ids=position_ids(mask).to(model.device)).logits.float()
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels[:, 1:].to(logits.device), ignore_index=-100, reduction="none"
        )
        counted = labels[:, 1:] != -100
        for offset, (loss, keep) in enumerate(zip(losses, counted)):
            out[start + offset] = (float(loss[keep.to(loss.device)].sum()), int(keep.sum()))
    return out


def _prompt_and_answer_ids(tokenizer, prompt: str, answer: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + answer (the prompt cut from the left to fit) and where the answer starts."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][: max_length - 1]
    prompt_ids = prompt_ids[-(max_length - len(answer_ids)):]
    return prompt_ids + answer_ids, len(prompt_ids)


def _pad_rows(rows: list[tuple[list[int], int]], pad: int, side: str):
    """Padded input ids, attention mask, and labels that keep only answer tokens."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for row, (tokens, answer_start) in enumerate(rows):
        offset = width - len(tokens) if side == "left" else 0
        ids[row, offset: offset + len(tokens)] = torch.tensor(tokens)
        mask[row, offset: offset + len(tokens)] = 1
        labels[row, offset + answer_start: offset + len(tokens)] = torch.tensor(tokens[answer_start:])
    return ids, mask, labels
