"""Error-analysis sample: stratified draw, CSV round trip (Chinese included), reviewer-adjusted accuracy."""

from __future__ import annotations

import csv

import pytest

from dstune.errors import DataError
from dstune.evaluate.review import (
    Outcome,
    allocate,
    draw_sample,
    load_meta,
    read_review,
    summarize_review,
    write_review,
    write_review_html,
)


def _outcomes():
    rows = []
    for i in range(100):
        verdict = "correct" if i < 60 else "near_miss" if i < 70 else "error"
        group = "刑事" if i % 2 else "民事"
        rows.append(Outcome(i, verdict, verdict == "correct", 0.5, group, f"d.jsonl:{i + 1}", f"问题{i}",
                            "参考答案", f"预测, \"quoted\"\n{i}"))
    return rows


def test_allocation_is_proportional_with_at_least_one_per_stratum():
    assert allocate({"a": 90, "b": 9, "c": 1}, 10) == {"a": 8, "b": 1, "c": 1}
    assert allocate({"a": 3, "b": 2}, 10) == {"a": 3, "b": 2}  # fewer rows than asked: all of them
    assert sum(allocate({"a": 50, "b": 30, "c": 20}, 7).values()) == 7


def test_sample_holds_only_errors_and_near_misses_from_every_stratum():
    sample = draw_sample(_outcomes(), 8, seed=3)
    assert len(sample) == 8
    assert {o.verdict for o in sample} == {"error", "near_miss"}
    assert {o.stratum for o in sample} == {"error/刑事", "error/民事", "near_miss/刑事", "near_miss/民事"}
    assert draw_sample(_outcomes(), 8, seed=3) == sample  # seeded


def test_review_csv_round_trip_and_adjusted_accuracy(tmp_path):
    outcomes = _outcomes()
    sample = draw_sample(outcomes, 40, seed=0)  # all 40 errors and near misses
    csv_path, _ = write_review(outcomes, sample, tmp_path, "exact_match")
    assert csv_path.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM: Excel shows Chinese
    html = write_review_html(csv_path).read_text(encoding="utf-8")
    assert "reviewer_verdict" in html and "问题60" in html

    with open(csv_path, encoding="utf-8-sig", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert rows[0]["prediction"].startswith('预测, "quoted"')  # commas, quotes, newlines survive
    for row in rows:  # reviewers accept every near miss and one error in three
        accept = row["auto_verdict"] == "near_miss" or int(row["id"]) % 3 == 0
        row["reviewer_verdict"] = "acceptable" if accept else "incorrect"
        row["error_category"] = "" if accept else ("hallucination" if int(row["id"]) % 2 else "incomplete; format")
    with open(csv_path, "w", encoding="utf-8-sig", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    summary = summarize_review(read_review(csv_path), load_meta(csv_path))
    rescued = 10 + sum(1 for i in range(70, 100) if i % 3 == 0)
    assert summary["reviewed"] == 40 and summary["accepted"] == rescued
    assert summary["auto_accuracy"] == pytest.approx(0.60)
    assert summary["reviewer_adjusted_accuracy"] == pytest.approx((60 + rescued) / 100)
    assert summary["error_categories"]["hallucination"] > 0 and "format" in summary["error_categories"]

    write_review(outcomes, sample, tmp_path, "exact_match")  # a new eval never overwrites filled-in work
    (kept,) = tmp_path.glob("review.2*.csv")
    assert summarize_review(read_review(kept), load_meta(kept)) == summary


def test_subsampled_strata_are_extrapolated(tmp_path):
    outcomes = _outcomes()
    csv_path, _ = write_review(outcomes, draw_sample(outcomes, 4, seed=0), tmp_path, "exact_match")
    rows = read_review(csv_path)
    for row in rows:
        row["accepted"] = row["auto_verdict"] == "near_miss"  # each near-miss stratum: all accepted
    summary = summarize_review(rows, load_meta(csv_path))
    assert summary["reviewer_adjusted_accuracy"] == pytest.approx(0.70)  # 60 + the 10 near misses


def test_unknown_verdict_names_the_line(tmp_path):
    path = tmp_path / "review.csv"
    path.write_text("id,stratum,auto_verdict,reviewer_verdict\n1,error/a,error,correct\n2,error/a,error,maybe\n",
                    encoding="utf-8")
    with pytest.raises(DataError, match="maybe") as info:
        read_review(path)
    assert f"{path}:3" in info.value.render()
