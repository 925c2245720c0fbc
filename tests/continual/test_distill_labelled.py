"""Distillation for classification: the teacher is a finished classification run with the same labels (or the
base model when it already is such a classifier); other teachers and dstune-head students fail before training."""

from __future__ import annotations

import pytest
import torch

from dstune.config import validate_config
from dstune.errors import ConfigError
from dstune.models.predict import load_predictor
from dstune.testing import save_tiny_hf_classifier, toy_classification_rows, write_jsonl
from dstune.train.continual.distill import AdapterOffTeacher, FrozenTeacher, build_teacher
from dstune.train.history import read_history
from dstune.train.recipe import train

TEXTS = ["hello how are you today", "合同 甲方 付款", "machines think and reason"]
RUN_A_LABELS = ["ai", "contract", "greet"]  # the lora_classifier_run fixture's label set (sorted from its data)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def student_config(model_dir, tmp_path, teacher: str, rows=None, steps: int = 2, **task):
    data = write_jsonl(tmp_path / "task_b.jsonl", rows or toy_classification_rows(16, seed=1))
    return validate_config({
        "model": {"name": str(model_dir)},
        "task": {"type": "classification", **task},
        "data": {"train": str(data), "eval_split": 0.0, "max_length": 32},
        "method": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": steps, "batch_size": 8, "learning_rate": 1e-3, "eval_strategy": "no",
                     "save_strategy": "no", "logging_steps": 1, "warmup_ratio": 0.0},
        "tracking": {"mlflow": {"enabled": False}},
        "continual": {"distill": {"teacher": teacher, "alpha": 0.5, "temperature": 2.0}},
        "output_dir": str(tmp_path / "run_b"),
    })


def relabelled(rows: list[dict], names: dict[str, str]) -> list[dict]:
    return [{**row, "label": names.get(row["label"], row["label"])} for row in rows]


def assert_not_trained(tmp_path) -> None:
    history = tmp_path / "run_b" / "history.jsonl"
    assert not history.exists() or not any("loss" in row for row in read_history(history))


def test_classification_run_distils_from_the_previous_runs_classifier(tiny_bert_dir, lora_classifier_run, tmp_path):
    config = student_config(tiny_bert_dir, tmp_path, str(lora_classifier_run))
    result = train(config, log=lambda *a: None)
    rows = [r for r in read_history(tmp_path / "run_b" / "history.jsonl") if "distill_kl" in r]
    assert len(rows) == 2 and all(r["distill_kl"] >= 0 and "task_loss" in r for r in rows)
    assert rows[0]["distill_kl"] > 0  # the student's new head disagrees with run A's trained one
    assert result.metrics

    # the teacher is run A's classifier exactly: its logits are run A's predictor logits
    predictor = load_predictor(lora_classifier_run)
    teacher = build_teacher(config, predictor.model, predictor.tokenizer, log=lambda *a: None)
    assert isinstance(teacher, FrozenTeacher)
    batch = predictor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    logits = teacher.logits(predictor.model, {"input_ids": batch["input_ids"],
                                               "attention_mask": batch["attention_mask"], "labels": None})
    (expected,) = predictor.logits(TEXTS)[0].values()
    assert logits.shape == (3, 3) and torch.allclose(logits.float(), expected, atol=1e-5)


@pytest.mark.parametrize("labels", ["other_set", "other_order"])
def test_teacher_run_with_other_labels_fails_before_training(tiny_bert_dir, lora_classifier_run, tmp_path, labels):
    if labels == "other_set":
        config = student_config(tiny_bert_dir, tmp_path, str(lora_classifier_run),
                                rows=relabelled(toy_classification_rows(16, seed=1), {"greet": "chat"}))
        student_labels = ["ai", "chat", "contract"]
    else:
        student_labels = ["greet", "contract", "ai"]
        config = student_config(tiny_bert_dir, tmp_path, str(lora_classifier_run), labels=student_labels)
    with pytest.raises(ConfigError) as err:
        train(config, log=lambda *a: None)
    assert err.value.where == "continual.distill.teacher"
    assert str(RUN_A_LABELS) in err.value.message and str(student_labels) in err.value.message
    assert_not_trained(tmp_path)


def test_single_label_teacher_for_a_multi_label_run_fails(tiny_bert_dir, lora_classifier_run, tmp_path):
    rows = [{**row, "label": [row["label"]]} for row in toy_classification_rows(16, seed=1)]
    config = student_config(tiny_bert_dir, tmp_path, str(lora_classifier_run), rows=rows, multi_label=True)
    with pytest.raises(ConfigError, match="one label per text and this run several labels per text"):
        train(config, log=lambda *a: None)
    assert_not_trained(tmp_path)


def test_base_teacher_of_a_plain_encoder_is_refused(tiny_bert_dir, tmp_path):
    config = student_config(tiny_bert_dir, tmp_path, "base")
    with pytest.raises(ConfigError, match="newly initialised") as err:
        train(config, log=lambda *a: None)
    assert err.value.where == "continual.distill.teacher"
    assert "finished classification run directory with the same labels" in err.value.hint
    assert_not_trained(tmp_path)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_base_teacher_of_a_trained_classifier_with_the_same_labels_is_its_own_head(tmp_path, method):
    from transformers import AutoModelForSequenceClassification

    from dstune.data.label_space import LabelSpace
    from dstune.models.heads import HeadSpec
    from dstune.models.load import load_tokenizer, resolve_source
    from dstune.models.task_model import build_task_model

    classifier = save_tiny_hf_classifier(tmp_path / "classifier")  # labels label_0, label_1, label_2
    config = student_config(classifier, tmp_path, "base")
    config.method = config.method.model_copy(update={"type": method})
    tokenizer = load_tokenizer(config.model)
    space = LabelSpace("single", ["label_0", "label_1", "label_2"])
    student = build_task_model(config, [HeadSpec("classification", space, pooling="auto", dropout=0.0)], tokenizer,
                               None, resolve_source(config.model)).model
    teacher = build_teacher(config, student, tokenizer, log=lambda *a: None)
    assert isinstance(teacher, AdapterOffTeacher if method == "lora" else FrozenTeacher)
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.add_(0.5)  # move the trainable weights (LoRA: and the trainable copy of the head)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    base = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    with torch.no_grad():
        expected = base(**batch).logits
        moved = student.eval()(**batch).logits
    assert not torch.allclose(moved, expected, atol=1e-3)
    assert torch.allclose(teacher.logits(student, batch), expected, atol=1e-5)


def test_student_with_dstune_heads_is_refused(tiny_bert_dir, lora_classifier_run, tmp_path):
    config = student_config(tiny_bert_dir, tmp_path, str(lora_classifier_run), pooling="mean")
    with pytest.raises(ConfigError, match=r"transformers classification class \(pooling: auto\)"):
        train(config, log=lambda *a: None)
    assert_not_trained(tmp_path)
