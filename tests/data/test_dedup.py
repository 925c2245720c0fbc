"""Exact and near-duplicate detection, and train → validation/test leakage, on crafted pairs."""

from __future__ import annotations

import numpy as np

from dstune.config.cleaning import DedupSettings
from dstune.data.dedup import (
    Fingerprints,
    duplicates_within,
    leaks,
    lsh_bands,
    minhash,
    normalise,
)

BASE = (
    "甲方与乙方于2023年签订买卖合同，约定乙方向甲方供应钢材一百吨，单价每吨四千元，交货期为六个月，"
    "逾期交货的，乙方应按日支付合同总价万分之五的违约金。甲方应在收货后三十日内付清全部货款。"
)
OTHER = "被告人冒充银行工作人员，通过电话联系被害人，以账户涉嫌洗钱为由诱骗其转账，数额巨大，构成诈骗罪。"
ENGLISH = (
    "The tenant shall pay the monthly rent of two thousand dollars on the first day of each month to the landlord."
)


def fingerprints(docs: list[str], name: str = "f", settings: DedupSettings | None = None) -> Fingerprints:
    return Fingerprints.of(
        [(docs, [f"{name}:{i}" for i in range(1, len(docs) + 1)])],
        settings or DedupSettings(),
    )


def jaccard(a: str, b: str, k: int = 5) -> float:
    sa, sb = ({t[i : i + k] for i in range(len(t) - k + 1)} for t in (a, b))
    return len(sa & sb) / len(sa | sb)


def test_normalised_text_ignores_width_case_spacing_and_punctuation():
    assert normalise("Ｈｅｌｌｏ,  World！") == normalise("hello world") == "helloworld"
    assert normalise("合同 第一条：") == "合同第一条"


def test_minhash_estimates_jaccard():
    near = BASE.replace("一百吨", "二百吨")
    signatures = minhash([BASE, near, OTHER], DedupSettings().near)
    assert signatures.shape == (3, 128) and signatures.dtype == np.uint32
    estimate = float((signatures[0] == signatures[1]).mean())
    assert abs(estimate - jaccard(BASE, near)) < 0.1
    assert float((signatures[0] == signatures[2]).mean()) < 0.1


def test_lsh_bands_fit_the_permutations_and_move_with_the_threshold():
    bands, rows = lsh_bands(0.8, 128)
    assert bands * rows <= 128
    assert lsh_bands(0.5, 128)[1] < rows < lsh_bands(0.95, 128)[1]


def test_exact_and_near_duplicates_within_a_split():
    docs = [
        BASE,  # 1
        OTHER,  # 2
        BASE.replace("一百吨", "二百吨"),  # 3: near-duplicate of 1 (one character changed)
        "  " + BASE.replace("，", ", ") + "!",  # 4: exact after normalisation
        ENGLISH,  # 5
        ENGLISH.upper(),  # 6: exact (case)
        ENGLISH.replace("two thousand", "three thousand"),  # 7: near-duplicate of 5
        "",  # 8: empty rows are never near-duplicates
        "",  # 9: but two empty rows are exact duplicates
    ]
    reasons = duplicates_within(fingerprints(docs), DedupSettings())
    assert reasons[3] == "exact duplicate of f:1"
    assert reasons[5] == "exact duplicate of f:5"
    assert reasons[8] == "exact duplicate of f:8"
    assert reasons[2].startswith("near-duplicate of f:1 (Jaccard ~0.")
    assert reasons[6].startswith("near-duplicate of f:5")
    assert set(reasons) == {2, 3, 5, 6, 8}


def test_threshold_and_switches_are_respected():
    docs = [BASE, BASE.replace("一百吨", "二百吨"), BASE]
    strict = DedupSettings(near={"threshold": 0.99})
    assert set(duplicates_within(fingerprints(docs, settings=strict), strict)) == {2}
    off = DedupSettings(exact=False, near={"enabled": False})
    assert duplicates_within(fingerprints(docs, settings=off), off) == {}


def test_leakage_from_train_into_validation():
    train = fingerprints([BASE, ENGLISH], "train.jsonl")
    validation = fingerprints([OTHER, ENGLISH.lower(), BASE.replace("六个月", "七个月")], "val.jsonl")
    reasons = leaks(validation, train, DedupSettings())
    assert reasons[1] == "exact duplicate of training row train.jsonl:2"
    assert reasons[2].startswith("near-duplicate of training row train.jsonl:1")
    assert 0 not in reasons


def test_fingerprints_subset_keeps_rows_aligned():
    fp = fingerprints([BASE, OTHER, ENGLISH])
    sub = fp.subset(np.array([2, 0]))
    assert sub.where == ["f:3", "f:1"] and (sub.signatures[1] == fp.signatures[0]).all()
