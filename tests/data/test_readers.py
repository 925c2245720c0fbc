"""Reading JSONL/JSON/CSV/TSV/Parquet files and HF datasets, and reporting bad input with file and line."""

from __future__ import annotations

import json

import pytest

from dstune.data.readers import Record, read_records
from dstune.errors import DataError


def write_lines(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def error_of(spec: str, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        read_records(spec, **kwargs)
    return info.value


def test_jsonl_keeps_physical_line_numbers_and_skips_blank_lines(tmp_path):
    spec = write_lines(tmp_path / "train.jsonl", ['{"text": "a"}', "", "   ", '{"text": "b"}'])
    records = read_records(spec)
    assert [(r.line, r.data["text"]) for r in records] == [(1, "a"), (4, "b")]
    assert records[1].where() == f"{spec}:4"


def test_invalid_json_reports_its_line_and_the_json_error(tmp_path):
    lines = ['{"text": "ok"}'] * 6 + ['{"text": "broken"'] + ['{"text": "ok"}']
    err = error_of(write_lines(tmp_path / "train.jsonl", lines))
    assert err.where.endswith("train.jsonl:7")
    assert "invalid JSON" in err.message and "delimiter" in err.message


def test_array_where_an_object_belongs_is_reported_with_its_line(tmp_path):
    err = error_of(write_lines(tmp_path / "train.ndjson", ['{"text": "ok"}', '["user", "hi"]']))
    assert err.where.endswith("train.ndjson:2")
    assert "expected a JSON object" in err.message and "array" in err.message


def test_json_array_file_counts_rows(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=2), encoding="utf-8")
    records = read_records(str(path))
    assert [r.data["text"] for r in records] == ["a", "b"]
    assert records[1].where() == f"{path}: row 2"


def test_json_array_with_a_non_object_element(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"text": "a"}, "just a string"]), encoding="utf-8")
    err = error_of(str(path))
    assert err.where == f"{path}: row 2" and "string" in err.message


def test_json_array_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]\n', encoding="utf-8")
    assert error_of(str(path)).where == f"{path}:3"


def test_json_file_with_jsonl_content_and_single_object(tmp_path):
    spec = write_lines(tmp_path / "lines.json", ['{"text": "a"}', '{"text": "b"}'])
    assert [r.line for r in read_records(spec)] == [1, 2]
    single = tmp_path / "one.json"
    single.write_text('{\n  "text": "only"\n}\n', encoding="utf-8")
    assert [r.data for r in read_records(str(single))] == [{"text": "only"}]


def test_csv_header_is_line_one_and_quoted_fields_may_span_lines(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('instruction,output\nhi,hello\n"multi\nline",x\n\nlast,y\n', encoding="utf-8")
    records = read_records(str(path))
    assert [(r.line, r.data["instruction"]) for r in records] == [
        (2, "hi"),
        (3, "multi\nline"),
        (6, "last"),
    ]
    assert records[0].where() == f"{path}:2"


def test_ragged_csv_row_is_reported_with_its_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("instruction,output\na,b\nc,d,e\n", encoding="utf-8")
    err = error_of(str(path))
    assert err.where == f"{path}:3"
    assert "3 fields" in err.message and "header has 2" in err.message


def test_tsv(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\nhello, world\tgreeting\n", encoding="utf-8")
    assert read_records(str(path))[0].data == {
        "text": "hello, world",
        "label": "greeting",
    }


def test_non_utf8_bytes_name_file_line_and_offset(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff bad"}\n')
    err = error_of(str(path))
    assert err.where == f"{path}:2"
    assert "byte offset 25" in err.message and "0xff" in err.message
    assert "data.encoding" in err.hint


def test_other_encodings_are_read_when_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes('{"text": "合同方A与合同方B签订本合同"}\n'.encode("gb18030"))
    assert read_records(str(path), encoding="gb18030")[0].data["text"] == "合同方A与合同方B签订本合同"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("train.jsonl", '{"text": "你好"}\n'),
        ("train.csv", "text\n你好\n"),
        ("train.json", '[{"text": "你好"}]'),
    ],
)
def test_utf8_bom_is_read_fine(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    assert read_records(str(path))[0].data == {"text": "你好"}


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.csv", "text,label\n")],
)
def test_empty_file_is_an_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    err = error_of(str(path))
    assert str(path) in err.render()
    assert "empty" in err.message or "no data rows" in err.message


def test_missing_file_says_so_and_lists_supported_inputs(tmp_path):
    err = error_of(str(tmp_path / "nope.jsonl"))
    assert "not found" in err.message
    for suffix in (".jsonl", ".json", ".csv", ".parquet"):
        assert suffix in err.hint


def test_unsupported_extension_and_directory(tmp_path):
    (tmp_path / "train.xml").write_text("<row/>\n", encoding="utf-8")
    assert "unsupported" in error_of(str(tmp_path / "train.xml")).message
    assert "directory" in error_of(str(tmp_path)).message


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), path)
    records = read_records(str(path))
    assert records == [
        Record(str(path), 1, {"text": "a", "label": "x"}, "row"),
        Record(str(path), 2, {"text": "b", "label": "y"}, "row"),
    ]
    assert records[1].where() == f"{path}: row 2"


def test_hf_dataset_name_and_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = read_records("tatsu-lab/alpaca:validation")
    assert calls == [("tatsu-lab/alpaca", "validation")]
    assert records[1].where() == "tatsu-lab/alpaca:validation: row 2"
    read_records("tatsu-lab/alpaca")
    assert calls[-1] == ("tatsu-lab/alpaca", "train")


def test_uncached_hf_dataset_offline_is_a_clear_error():
    err = error_of("dstune-tests/no-such-dataset")
    assert "not cached" in err.message and "local file" in err.hint


def test_plain_text_is_one_example_per_line(tmp_path):
    spec = write_lines(tmp_path / "corpus.txt", ["第一行。", "", "second line"])
    assert [(r.line, r.data) for r in read_records(spec)] == [
        (1, {"text": "第一行。"}),
        (3, {"text": "second line"}),
    ]


def test_iter_records_yields_unparseable_rows_with_their_reason(tmp_path):
    from dstune.data.readers import iter_records

    spec = write_lines(tmp_path / "train.jsonl", ['{"text": "a"}', "{oops", "[1, 2]", '{"text": "b"}'])
    records = list(iter_records(spec))
    assert [(r.line, r.error is None) for r in records] == [
        (1, True),
        (2, False),
        (3, False),
        (4, True),
    ]
    assert records[1].data == {"raw": "{oops"} and "invalid JSON" in records[1].error
    assert "got a JSON array" in records[2].error


def test_gbk_without_declaration_names_file_line_and_offset(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"text,label\n" + "甲方违约,合同\n".encode("gbk"))
    err = error_of(str(path))
    assert err.where == f"{path}:2" and "byte offset 11" in err.message
    assert read_records(str(path), encoding="gbk")[0].data == {
        "text": "甲方违约",
        "label": "合同",
    }


def test_encoding_that_cannot_be_read_by_line_is_refused(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes('{"text": "a"}\n'.encode("utf-16"))
    assert "ASCII-compatible" in error_of(str(path), encoding="utf-16").message
    assert "unknown text encoding" in error_of(str(path), encoding="klingon").message
