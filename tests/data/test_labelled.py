"""Labelled rows: first-sub-token alignment for NER (a word split into several tokens, Chinese characters),
label spaces (inferred, multi-hot, hierarchical), bad rows reported with file:line, and the collator."""

from __future__ import annotations

import pytest
import torch

from dstune.config import validate_config
from dstune.config.cleaning import CleaningSection
from dstune.config.prepare import PrepareSettings
from dstune.config.schema import DataSection, TaskSection
from dstune.data.label_space import LabelSpace
from dstune.data.labelled import (
    LabelledCollator,
    LabelledSource,
    encode_words,
    prepare_labelled_data,
    spaced_words,
    split_words,
)
from dstune.errors import ConfigError, DataError
from dstune.testing import build_encoder_tokenizer, write_jsonl


def test_a_word_split_into_several_tokens_is_labelled_on_its_first_sub_token(tokenizer):
    words = ["Zyxwvut", "is", "here"]
    n_pieces = len(tokenizer("Zyxwvut", add_special_tokens=False)["input_ids"])
    assert n_pieces > 2  # the tiny BPE does not know the word
    encoded = encode_words(tokenizer, words, max_length=64, tag_ids=[1, 0, 0])
    labels = encoded["labels"]
    assert labels[:n_pieces] == [1] + [-100] * (n_pieces - 1)
    assert [i for i, w in enumerate(encoded["word_ids"]) if w == 0] == [0]
    assert [label for label in labels if label != -100] == [1, 0, 0]  # one label per word


def test_encoder_special_tokens_and_chinese_characters():
    tokenizer = build_encoder_tokenizer()
    words = list("合同甲方") + ["xylophones"]
    encoded = encode_words(tokenizer, words, max_length=64, tag_ids=[1, 2, 3, 4, 0])
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert encoded["labels"][0] == -100 and encoded["labels"][-1] == -100
    assert [label for label in encoded["labels"] if label != -100] == [1, 2, 3, 4, 0]
    assert tokens[1:5] == list("合同甲方")  # one token per character


def test_words_of_raw_text_and_their_spacing():
    assert split_words("Bob lives in 北京 now.") == ["Bob", "lives", "in", "北", "京", "now."]
    assert spaced_words(["Bob", "lives", "北", "京", "now"]) == ["Bob", " lives", "北", "京", " now"]


def _source(path, task_type="classification", **settings):
    return LabelledSource("t", task_type, TaskSection(type=task_type, **settings), str(path))


def test_label_space_inferred_and_bad_rows_reported_with_line(tokenizer, tmp_path):
    rows = [{"text": f"text {i}", "label": ["b", "a"][i % 2]} for i in range(8)]
    rows[5] = {"text": "no label here"}
    path = write_jsonl(tmp_path / "cls.jsonl", rows)
    data_cfg = DataSection(train=str(path), eval_split=0.0, max_length=16)
    with pytest.raises(DataError, match=f"{path}:6: missing key 'label'"):
        prepare_labelled_data(_source(path), data_cfg, tokenizer, tmp_path)
    data = prepare_labelled_data(_source(path), data_cfg.model_copy(update={"on_error": "skip"}), tokenizer, tmp_path)
    assert data.space.names == ["a", "b"] and data.stats["rows_rejected"] == 1
    assert data.train[0]["labels"] == [1] and data.train.column_names == ["input_ids", "labels", "task"]
    assert "no label here" in (tmp_path / "rejected.jsonl").read_text()


def test_multi_label_and_hierarchical_labels(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "ml.jsonl", [{"text": "x", "label": ["red", "big"]}, {"text": "y", "label": "big"}])
    data = prepare_labelled_data(_source(path, multi_label=True), DataSection(eval_split=0.0), tokenizer, tmp_path)
    assert data.space.names == ["big", "red"] and data.train["labels"] == [[1, 1], [1, 0]]

    space = LabelSpace.for_values("single", ["刑事/诈骗", "民事"], hierarchical=True)
    assert space.index(" 刑事 / 诈骗 ") == 0  # path parts are trimmed
    with pytest.raises(ValueError, match="not in the label set"):
        space.encode("行政")


def test_token_rows_need_bio_tags_of_equal_length(tokenizer, tmp_path):
    rows = [{"tokens": ["a", "b"], "tags": ["B-X", "O"]}, {"tokens": ["a"], "tags": ["B-X", "O"]},
            {"tokens": ["a"], "tags": ["PER"]}]
    path = write_jsonl(tmp_path / "ner.jsonl", rows)
    with pytest.raises(DataError) as error:
        prepare_labelled_data(_source(path, "token_classification"), DataSection(eval_split=0.0), tokenizer, tmp_path)
    assert f"{path}:2: 1 tokens but 2 tags" in str(error.value) and f"{path}:3: tag 'PER' is not BIO" in str(error.value)


def test_collator_packs_mixed_tasks_and_aligns_token_labels_with_padding(tokenizer):
    rows = [{"input_ids": [5, 6, 7], "labels": [1, -100, 2], "task": 1}, {"input_ids": [5], "labels": [2], "task": 0}]
    packed = LabelledCollator(tokenizer, ["single", "token"], packed=True)(rows)
    assert packed["labels"].tolist() == [[1, 1, -100, 2], [0, 2, -100, -100]]
    tokenizer.padding_side = "left"
    try:
        natural = LabelledCollator(tokenizer, ["token"], packed=False)([{**rows[0], "task": 0},
                                                                        {"input_ids": [9], "labels": [3], "task": 0}])
    finally:
        tokenizer.padding_side = "right"
    assert natural["labels"].tolist() == [[1, -100, 2], [-100, -100, 3]]
    assert natural["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    multi = LabelledCollator(tokenizer, ["multi"], packed=False)([{"input_ids": [5], "labels": [0, 1], "task": 0}])
    assert multi["labels"].dtype == torch.float32


# --- cleaning on token rows: filters only; a text transform is refused, in train and in data prepare ----------

TERM_MAP = {"type": "term_map", "terms": {"甲方": "合同方A"}}


def _run_config(task: dict, steps: list, **sections) -> dict:
    return {"model": {"name": "m"}, "task": task, "cleaning": {"steps": steps}, "output_dir": "o", **sections}


def test_a_text_transform_on_token_rows_is_a_config_error_naming_the_step_and_why():
    raw = _run_config({"type": "token_classification"}, [{"type": "unicode"}, TERM_MAP, {"type": "length", "min": 2}],
                      data={"train": "ner.jsonl"})
    with pytest.raises(ConfigError) as error:
        validate_config(raw)
    message = str(error.value)
    assert "cleaning.steps[0] (unicode), cleaning.steps[1] (term_map)" in message and "steps[2]" not in message
    assert "aligned one-to-one with their tags" in message and "only the row filters (length, language)" in message

    tasks = {"doc": {"type": "classification", "train": "doc.jsonl"},
             "ner": {"type": "token_classification", "train": "ner.jsonl"}}
    with pytest.raises(ConfigError, match="multitask.tasks.ner rows are token lists.*dstune data prepare"):
        validate_config(_run_config({"type": "multitask"}, [TERM_MAP], multitask={"tasks": tasks}))
    with pytest.raises(ConfigError, match="cleaning.steps: cleaning.steps\\[0\\] \\(term_map\\)"):
        PrepareSettings(DataSection(train="ner.jsonl"), CleaningSection(steps=[TERM_MAP]), "token_classification", None)
    # row filters are fine, and classification takes every step
    validate_config(_run_config({"type": "token_classification"}, [{"type": "length", "max": 50}],
                                data={"train": "ner.jsonl"}))
    validate_config(_run_config({"type": "classification"}, [TERM_MAP], data={"train": "doc.jsonl"}))


def test_token_rows_go_through_the_row_filters_and_keep_their_tokens(tokenizer, tmp_path):
    rows = [{"tokens": list("甲方付款按时"), "tags": ["B-ORG", "I-ORG", "O", "O", "O", "O"]},
            {"tokens": ["ok"], "tags": ["O"]},  # 2 chars: below the minimum
            {"tokens": list("乙方交货"), "tags": ["B-ORG", "I-ORG", "O", "O"]}]
    path = write_jsonl(tmp_path / "ner.jsonl", rows)
    cleaning = CleaningSection(steps=[{"type": "length", "min": 5}])
    data_cfg = DataSection(eval_split=0.0, on_error="skip")
    data = prepare_labelled_data(_source(path, "token_classification"), data_cfg, tokenizer, tmp_path,
                                 cleaning=cleaning)
    assert (data.stats["rows_train"], data.stats["rows_rejected_cleaning"], data.stats["rows_cleaned"]) == (2, 1, 0)
    assert "2 chars is below the minimum 5" in (tmp_path / "rejected.jsonl").read_text()
    expected = encode_words(tokenizer, rows[0]["tokens"], data_cfg.max_length)["input_ids"]
    assert data.train[0]["input_ids"] == expected
    with pytest.raises(ConfigError, match="task 't' rows are token lists"):  # called without a validated config
        prepare_labelled_data(_source(path, "token_classification"), data_cfg, tokenizer, tmp_path,
                              cleaning=CleaningSection(steps=[TERM_MAP]))
