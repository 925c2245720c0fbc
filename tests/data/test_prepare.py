"""`data prepare` end to end: malformed input with file and line, splits, leakage, report, manifest skip, CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dstune.cli import app
from dstune.config.cleaning import CleaningSection
from dstune.config.prepare import PrepareSettings, load_prepare_settings
from dstune.config.schema import DataSection
from dstune.data.prepare import prepare
from dstune.data.sft import prepare_sft_data
from dstune.errors import ConfigError, DataError

LABELS = ["刑事/诈骗/电信诈骗", "民事/合同/买卖合同"]


def case(i: int, label: str = LABELS[0], **extra) -> dict:
    body = "冒充客服诱骗被害人转账" if label == LABELS[0] else "双方签订买卖合同后一方违约"
    return {
        "text": f"第{i}号案件：{body}，涉案金额{i * 1013}元，被告人编号{i * 7919}。",
        "label": label,
        **extra,
    }


def write_jsonl(path, rows: list) -> str:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return str(path)


def settings(tmp_path, train: str, task: str = "classification", **cleaning) -> PrepareSettings:
    data = {k: cleaning.pop(k) for k in ("validation", "test", "encoding", "on_error", "eval_split") if k in cleaning}
    section = CleaningSection(task=task, output_dir=str(tmp_path / "out"), **cleaning)
    return PrepareSettings(DataSection(train=train, **{"eval_split": 0.0, **data}), section, task, None)


def malformed(tmp_path, task: str, name: str, content: bytes | str, **cleaning) -> DataError:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(DataError) as info:
        prepare(settings(tmp_path, str(path), task, **cleaning))
    return info.value


GOOD = json.dumps(case(1), ensure_ascii=False)


@pytest.mark.parametrize(
    ("task", "name", "content", "line", "reason"),
    [
        (
            "classification",
            "t.jsonl",
            "\n".join([GOOD] * 6 + ['{"text": "x"'] + [GOOD]),
            7,
            "invalid JSON",
        ),
        (
            "classification",
            "t.jsonl",
            f'{GOOD}\n{{"text": "no label here"}}\n',
            2,
            "missing key 'label'",
        ),
        (
            "classification",
            "t.jsonl",
            f'{GOOD}\n{{"text": "  ", "label": "a"}}\n',
            2,
            "'text' is empty",
        ),
        (
            "classification",
            "t.jsonl",
            f'{GOOD}\n["text", "label"]\n',
            2,
            "expected a JSON object",
        ),
        (
            "classification",
            "t.csv",
            "text,label\n合同纠纷,民事\n诈骗,刑事,多余\n",
            3,
            "3 fields but the header has 2",
        ),
        (
            "token_classification",
            "t.jsonl",
            '{"tokens": ["张", "三"], "tags": ["B-PER"]}\n',
            1,
            "2 tokens but 1 tags",
        ),
        (
            "token_classification",
            "t.jsonl",
            '{"tokens": ["a", "b"], "tags": ["O", "I-PER"]}\n',
            1,
            "not begun",
        ),
        (
            "sft",
            "t.jsonl",
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n',
            1,
            "unknown role 'bot'",
        ),
    ],
)
def test_malformed_rows_stop_with_file_line_and_reason(tmp_path, task, name, content, line, reason):
    err = malformed(tmp_path, task, name, content)
    assert f"{tmp_path / name}:{line}: " in err.message and reason in err.message
    assert "on_error: skip" in err.hint


def test_label_outside_the_set(tmp_path):
    content = f"{GOOD}\n" + json.dumps(case(2, "行政/处罚"), ensure_ascii=False) + "\n"
    err = malformed(tmp_path, "classification", "t.jsonl", content, labels={"allowed": LABELS})
    assert f"{tmp_path / 't.jsonl'}:2: label '行政/处罚' is not in the label set" in err.message


def test_gbk_without_declaration_and_empty_file(tmp_path):
    err = malformed(
        tmp_path,
        "classification",
        "gbk.csv",
        b"text,label\n" + "合同纠纷,民事\n".encode("gbk"),
    )
    assert err.where == f"{tmp_path / 'gbk.csv'}:2" and "byte offset 11" in err.message
    err = malformed(tmp_path, "classification", "empty.jsonl", "\n \n")
    assert err.where == str(tmp_path / "empty.jsonl") and "empty" in err.message


def test_gbk_declared_and_bom_are_read(tmp_path):
    (tmp_path / "gbk.csv").write_bytes("text,label\n甲方未按期付款,民事\n".encode("gbk"))
    result = prepare(settings(tmp_path, str(tmp_path / "gbk.csv"), encoding="gbk", output_format="input"))
    assert "甲方未按期付款" in (tmp_path / "out" / "train.csv").read_text(encoding="utf-8")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (GOOD + "\n").encode())
    assert prepare(settings(tmp_path, str(tmp_path / "bom.jsonl"))).report["splits"]["train"]["rows"] == 1
    assert result.files[0] == "train.csv"


def test_more_than_twenty_problems_are_counted(tmp_path):
    err = malformed(
        tmp_path,
        "classification",
        "t.jsonl",
        "\n".join([GOOD] + ['{"text": "x"}'] * 25),
    )
    assert err.message.startswith("25 malformed row(s)") and "... and 5 more" in err.message


def test_prepare_end_to_end(tmp_path):
    rows = [case(i, LABELS[i % 2], case_id=f"c{i // 2}") for i in range(40)]
    rows.append(dict(rows[3]))  # exact duplicate
    rows.append({"text": "<p></p>", "label": LABELS[0], "case_id": "e"})  # emptied by html
    rows.append("{broken json")
    rows.append(case(99, "未知"))  # outside the levels
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    validation = write_jsonl(
        tmp_path / "val.jsonl", [rows[5], case(500, LABELS[1], case_id="v1")]
    )  # the first one leaks
    cfg = settings(
        tmp_path,
        train,
        validation=validation,
        on_error="skip",
        fields={"group": "case_id"},
        steps=[{"type": "html"}, {"type": "term_map", "terms": {"被告人": "被告"}}],
        labels={"levels": [["刑事", "民事"], ["诈骗", "合同"], ["电信诈骗", "买卖合同"]]},
        split={"test": 0.25},
    )
    cfg.data.validation = validation
    result = prepare(cfg)
    out = tmp_path / "out"
    report = json.loads((out / "data_report.json").read_text())
    assert report["rows_read"] == {"train": 44, "validation": 2}
    assert report["rejected"]["by_split"] == {
        "read": {"train": 1}, "validate": {"train": 1}, "clean:0:html": {"train": 1}, "dedup": {"train": 1},
        "leakage": {"validation": 1},
    }  # fmt: skip
    assert report["duplicates"] == {"exact": 1, "near": 0} and report["leakage"]["validation"] == {
        "exact": 1,
        "near": 0,
    }
    assert report["cleaning"]["1:term_map"]["changed"] == 41 + 2  # valid train rows less the emptied one, + validation
    splits = report["splits"]
    assert splits["validation"]["rows"] == 1 and splits["train"]["rows"] + splits["test"]["rows"] == 40
    assert splits["train"]["label_levels"][0] == {
        "刑事": splits["train"]["labels"][LABELS[0]],
        "民事": splits["train"]["labels"][LABELS[1]],
    }
    assert set(splits["train"]["length_chars"]) >= {"p5", "p50", "p95", "max"}
    train_rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    test_rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert not {r["case_id"] for r in train_rows} & {r["case_id"] for r in test_rows}
    assert all("被告人" not in r["text"] and r["label"] in LABELS for r in train_rows)
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rejected} == {
        "read",
        "validate",
        "clean:0:html",
        "dedup",
        "leakage",
    }
    assert next(r for r in rejected if r["stage"] == "read")["where"] == f"{train}:43"
    html = (out / "data_report.html").read_text()
    assert "<svg" in html and "电信诈骗" in html
    assert sorted(result.files) == sorted(
        [
            "train.jsonl",
            "validation.jsonl",
            "test.jsonl",
            "rejected.jsonl",
            "data_report.json",
            "data_report.html",
        ]
    )


def test_annotators_vote_ties_and_kappa(tmp_path):
    rows = [
        {
            "text": f"案情{i}：被告人多次盗窃财物，数额较大，证据确实充分{i}。",
            "labels": ["a", "a", "b" if i % 3 else "a"],
        }
        for i in range(12)
    ]
    rows.append({"text": "意见不一的案件，三位标注员各执一词。", "labels": ["a", "b", "c"]})
    cfg = settings(tmp_path, write_jsonl(tmp_path / "t.jsonl", rows), on_error="skip")
    report = prepare(cfg).report
    assert report["ties"] == 1 and report["rejected"]["by_split"] == {"vote": {"train": 1}}
    assert report["splits"]["train"]["labels"] == {"a": 12}
    assert report["agreement"]["method"] == "fleiss" and report["agreement"]["items"] == 13


def test_rerun_does_no_work_until_an_input_changes(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [case(i, LABELS[i % 2]) for i in range(10)])
    cfg = settings(tmp_path, train)
    first = prepare(cfg)
    out = tmp_path / "out"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = prepare(cfg)
    assert again.skipped and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    write_jsonl(tmp_path / "train.jsonl", [case(i, LABELS[i % 2]) for i in range(11)])
    changed = prepare(cfg)
    assert not changed.skipped and changed.changes[0].startswith(f"input train ({train}) changed: sha256")
    assert first.report["splits"]["train"]["rows"] == 10 and changed.report["splits"]["train"]["rows"] == 11


def test_config_file_and_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [case(i, LABELS[i % 2]) for i in range(20)])
    (tmp_path / "prep.yaml").write_text(
        "data: {train: train.jsonl, eval_split: 0.2}\n"
        "cleaning:\n  task: classification\n  steps: [{type: unicode}, {type: pii}]\n  output_dir: prepared\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    result = runner.invoke(app, ["data", "prepare", "prep.yaml"])
    assert result.exit_code == 0, result.output
    assert "rows kept" in result.output and (tmp_path / "prepared" / "validation.jsonl").is_file()
    assert "up to date" in runner.invoke(app, ["data", "prepare", "prep.yaml"]).output
    inspected = runner.invoke(app, ["data", "inspect", "prepared/train.jsonl"])
    assert inspected.exit_code == 0, inspected.output
    report = json.loads((tmp_path / "prepared" / "train_report" / "data_report.json").read_text())
    assert report["task"] == "classification" and report["splits"]["file"]["rows"] == 16


def test_config_errors_name_the_key(tmp_path):
    (tmp_path / "bad.yaml").write_text("data: {train: t.jsonl}\ncleaning:\n  dedupp: {}\n", encoding="utf-8")
    with pytest.raises(
        ConfigError,
        match="unknown key 'cleaning.dedupp'; did you mean 'cleaning.dedup'",
    ):
        load_prepare_settings(tmp_path / "bad.yaml")
    (tmp_path / "run.yaml").write_text("model: {name: m}\noutput_dir: o\ndata: {train: t.jsonl}\n", encoding="utf-8")
    loaded = load_prepare_settings(tmp_path / "run.yaml", ["cleaning.task=classification"])
    assert (loaded.task, loaded.tokenizer) == ("classification", "m")
    with pytest.raises(ConfigError, match="leaves nothing to train on"):
        prepare(
            settings(
                tmp_path,
                write_jsonl(tmp_path / "t.jsonl", [case(1)]),
                eval_split=0.6,
                split={"test": 0.5},
            )
        )


def test_train_path_applies_cleaning_steps(tmp_path, tokenizer):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "甲方电话13800138000"},
                {"role": "assistant", "content": f"好的{i}"},
            ]
        }
        for i in range(3)
    ]
    rows.append(
        {
            "messages": [
                {"role": "user", "content": "<br>"},
                {"role": "assistant", "content": "ok"},
            ]
        }
    )
    spec = write_jsonl(tmp_path / "train.jsonl", rows)
    cleaning = CleaningSection(
        steps=[
            {"type": "html"},
            {"type": "term_map", "terms": {"甲方": "合同方A"}},
            {"type": "pii"},
        ]
    )
    data = prepare_sft_data(
        DataSection(train=spec, eval_split=0, on_error="skip"),
        tokenizer,
        tmp_path / "run",
        cleaning=cleaning,
    )
    assert data.stats["rows_train"] == 3 and data.stats["rows_rejected"] == 1
    assert "合同方A电话[PHONE]" in tokenizer.decode(data.train[0]["input_ids"])
    assert (data.stats["rows_cleaned"], data.stats["rows_rejected_cleaning"]) == (3, 1)
    assert data.stats["cleaning"]["2:pii"] == {"changed": 3, "rejected": 0, "masked": {"phone": 3}}
    rejected = json.loads((tmp_path / "run" / "rejected.jsonl").read_text())
    assert rejected["line"] == 4 and "html left text piece 1 empty" in rejected["reason"]
