"""Distillation: the KL term, the teacher with adapters disabled, supervised positions, the logit cache,
and the vocabulary check."""

from __future__ import annotations

import pytest
import torch

from dstune.config import validate_config
from dstune.config.continual import DistillSection
from dstune.config.schema import MethodSection
from dstune.errors import ConfigError
from dstune.models.adapters import apply_method
from dstune.testing import build_tokenizer, save_tiny_causal_lm
from dstune.train.continual.data import supervised_logits
from dstune.train.continual.distill import (
    AdapterOffTeacher,
    DistillationHook,
    FrozenTeacher,
    build_teacher,
    distillation_loss,
)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_distillation_loss_is_zero_when_student_equals_teacher(direction):
    torch.manual_seed(0)
    logits = torch.randn(5, 11, requires_grad=True)
    same = distillation_loss(logits, logits.detach().clone(), temperature=2.0, direction=direction)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    same.backward()
    assert logits.grad.abs().max().item() < 1e-6  # and it is a minimum
    other = distillation_loss(logits, torch.randn(5, 11), temperature=2.0, direction=direction)
    assert other.item() > 0.01


def test_multi_label_distillation_is_a_bernoulli_kl_per_label():
    student, teacher = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, -1.0]])
    # by hand at T = 1: sum over labels of p log(p/q) + (1 - p) log((1 - p)/(1 - q)), p = sigmoid(teacher)
    p, q = torch.sigmoid(teacher), torch.sigmoid(student)
    expected = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum().item()
    assert distillation_loss(student, teacher, independent=True).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(teacher, teacher, independent=True).item() == pytest.approx(0.0, abs=1e-7)
    # a softmax over the row would call [0, 1] and [10, 11] the same distribution; independent labels do not
    assert distillation_loss(torch.tensor([[10.0, 11.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(0.0,
                                                                                                               abs=1e-6)
    assert distillation_loss(torch.tensor([[10.0, 11.0]]), torch.tensor([[0.0, 1.0]]), independent=True).item() > 1.0


def test_distillation_loss_matches_the_kl_formula_and_ignores_vocab_padding():
    torch.manual_seed(1)
    student, teacher = torch.randn(3, 7), torch.randn(3, 7)
    p_t, p_s = (teacher / 2).softmax(-1), (student / 2).softmax(-1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * 4
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    padded = torch.cat([teacher, torch.full((3, 5), -3.0)], dim=-1)  # a teacher with a padded embedding
    assert distillation_loss(student, padded, 2.0, vocab_size=7).item() == pytest.approx(expected.item(), rel=1e-5)
    for vocab_size in (None, 9):  # no tokenizer length given, or the student does not cover it: not padding
        with pytest.raises(ConfigError, match="12 columns and the student.s 7"):
            distillation_loss(student, padded, 2.0, vocab_size=vocab_size)


@pytest.fixture(scope="module")
def lora_model(tiny_v3_dir):
    """The tiny DeepSeek-V3 with a LoRA adapter (MLA attention + MLP through ParamWrapper) that changes its output."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_v3_dir)
    model, _ = apply_method(model, MethodSection(type="lora", r=4, alpha=8, dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def test_disabling_adapters_gives_exactly_the_base_models_logits(tiny_v3_dir, lora_model):
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[3, 10, 20, 30, 40, 50, 60, 4]])
    base = AutoModelForCausalLM.from_pretrained(tiny_v3_dir).eval()
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    lora_model.train()
    teacher = AdapterOffTeacher().logits(lora_model, {"input_ids": ids, "labels": ids})
    assert torch.equal(teacher, expected)
    assert lora_model.training  # training mode restored, adapters enabled again
    with torch.no_grad():
        student = lora_model.eval()(input_ids=ids).logits
    assert not torch.allclose(student, expected, atol=1e-3)


def sft_batch(tokenizer):
    """Two right-padded SFT examples whose prompt tokens are masked with -100."""
    rows = [[3, 10, 20, 30, 40, 4], [3, 11, 21, 4]]
    width = max(map(len, rows))
    ids = torch.full((2, width), tokenizer.pad_token_id)
    labels = torch.full((2, width), -100)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, 3 : len(row)] = ids[i, 3 : len(row)]  # supervise the tail
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class CountingTeacher:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def logits(self, model, inputs):
        self.calls += 1
        return self.inner.logits(model, inputs)


def test_kd_hook_is_zero_for_an_identical_teacher_and_mixes_with_alpha(tiny_v3_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(tiny_v3_dir).eval()
    teacher = FrozenTeacher(AutoModelForCausalLM.from_pretrained(tiny_v3_dir))
    batch = sft_batch(tokenizer)
    outputs = student(**batch)
    hook = DistillationHook(teacher, DistillSection(alpha=0.25, temperature=2.0), shift=True)
    loss, logs = hook(student, batch, outputs, outputs.loss)
    assert logs["distill_kl"] == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(0.75 * outputs.loss.item(), rel=1e-5)


def test_kd_uses_only_supervised_positions_and_the_cache_skips_the_teacher(lora_model, tokenizer):
    batch = sft_batch(tokenizer)
    lora_model.eval()
    outputs = lora_model(**batch)
    assert supervised_logits(outputs.logits, batch["labels"], shift=True).shape[0] == 3 + 1

    class Noisy:  # the base model's logits, with garbage where nothing is supervised
        def logits(self, model, inputs):
            logits = AdapterOffTeacher().logits(model, inputs).clone()
            logits[:, :2] = 1e4 * torch.randn_like(logits[:, :2])
            return logits

    settings = DistillSection(alpha=1.0)
    clean = DistillationHook(AdapterOffTeacher(), settings, shift=True)(lora_model, batch, outputs, outputs.loss)[1]
    noisy = DistillationHook(Noisy(), settings, shift=True)(lora_model, batch, outputs, outputs.loss)[1]
    assert clean["distill_kl"] > 0 and noisy["distill_kl"] == pytest.approx(clean["distill_kl"], rel=1e-5)

    counting = CountingTeacher(AdapterOffTeacher())
    cached = DistillationHook(counting, settings, shift=True, cache=True)
    first = cached(lora_model, batch, outputs, outputs.loss)[1]["distill_kl"]
    swapped = {key: value.flip(0) for key, value in batch.items()}  # same examples, another order
    again = cached(lora_model, swapped, lora_model(**swapped), outputs.loss)[1]["distill_kl"]
    assert counting.calls == 1
    assert first == pytest.approx(clean["distill_kl"], rel=1e-3)  # float16 cache
    assert again == pytest.approx(first, rel=1e-3)


def test_teacher_with_a_different_vocabulary_is_a_clear_config_error(tiny_v3_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    other = save_tiny_causal_lm(tmp_path / "other")
    build_tokenizer(vocab_size=300).save_pretrained(other)  # same architecture, another tokenizer
    config = validate_config({
        "model": {"name": str(tiny_v3_dir)}, "data": {"train": "x.jsonl"}, "output_dir": str(tmp_path / "run"),
        "method": {"type": "full"}, "continual": {"distill": {"teacher": str(other)}},
    })
    student = AutoModelForCausalLM.from_pretrained(tiny_v3_dir)
    with pytest.raises(ConfigError, match="different vocabulary") as err:
        build_teacher(config, student, build_tokenizer(), log=lambda *a: None)
    assert err.value.where == "continual.distill.teacher" and "same tokenizer" in err.value.hint


def test_supervised_rows_for_classification_shaped_logits():
    """The KD hook is generic over logits: [B, C] with class ids (-100 skipped), token tags, multi-label."""
    logits = torch.arange(12.0).reshape(4, 3)
    rows = supervised_logits(logits, torch.tensor([0, -100, 2, 1]), shift=False)
    assert rows.tolist() == [logits[0].tolist(), logits[2].tolist(), logits[3].tolist()]
    multi_label = supervised_logits(logits, torch.tensor([[1.0, 0.0, 1.0]] * 4), shift=False)
    assert multi_label.shape == (4, 3)
    tags = supervised_logits(torch.zeros(2, 5, 3), torch.tensor([[0, 1, -100, -100, 2]] * 2), shift=False)
    assert tags.shape == (6, 3)
    kl = distillation_loss(rows, rows + torch.tensor([0.0, 1.0, 0.0]), temperature=1.0)
    assert kl.item() > 0
