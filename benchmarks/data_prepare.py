"""Benchmark: clean + exact dedup + near-dedup of synthetic Chinese documents, dstune vs plain pandas.

    python benchmarks/data_prepare.py                # 200,000 documents of ~500 characters
    python benchmarks/data_prepare.py --rows 20000   # a quicker run

Both implementations run the same steps on the same JSONL file, each in its own process (so that
peak memory is its own): NFKC + full-width → half-width, HTML stripping, whitespace collapse, a
term map, PII masking, exact dedup on normalised text, MinHash near-dedup at Jaccard 0.8 over
5-character shingles (128 permutations). dstune: Arrow + batched ``Dataset.map`` + vectorised
MinHash/LSH. Baseline: pandas ``Series.map`` + ``drop_duplicates`` + datasketch ``MinHash``/``MinHashLSH``.
Prints rows/s, peak RSS and the ratios.
"""

from __future__ import annotations

import argparse
import html
import json
import random
import re
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

TERMS = {
    "甲方": "合同方A",
    "乙方": "合同方B",
    "甲方代表": "合同方A代表",
    "被告人": "被告",
}
STEPS = [
    {"type": "unicode"},
    {"type": "html"},
    {"type": "whitespace"},
    {"type": "term_map", "terms": TERMS},
    {"type": "pii"},
]
THRESHOLD, NUM_PERM, SHINGLE = 0.8, 128, 5


def _peak_rss_kib() -> int:
    """Peak RSS of this process in KiB (VmHWM; ``ru_maxrss`` would carry over the parent's peak across exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def make_documents(rows: int, path: Path, seed: int = 0) -> None:
    """~500-character Chinese documents; 5% exact (re-spaced) and 5% near duplicates, HTML and PII dirt."""
    rng = random.Random(seed)
    common = [chr(c) for c in range(0x4E00, 0x4E00 + 2500)]
    phrases = [
        "甲方代表",
        "乙方",
        "被告人",
        "本院认为",
        "合同约定",
        "<p>",
        "</p>",
        "　",
        "，",
        "。",
    ]
    docs: list[str] = []
    with open(path, "w", encoding="utf-8") as out:
        for i in range(rows):
            roll = rng.random()
            if docs and roll < 0.05:
                text = rng.choice(docs).replace("，", " ，")
            elif docs and roll < 0.10:
                base = list(rng.choice(docs))
                for _ in range(8):
                    base[rng.randrange(len(base))] = rng.choice(common)
                text = "".join(base)
            else:
                parts = [rng.choice(phrases) if rng.random() < 0.15 else rng.choice(common) for _ in range(470)]
                text = (
                    "".join(parts) + f"电话1{rng.randint(3, 9)}{rng.randint(10**8, 10**9 - 1)}，邮箱u{i}@example.com。"
                )
            if len(docs) < 5000:
                docs.append(text)
            out.write(json.dumps({"text": text, "label": f"类{i % 5}"}, ensure_ascii=False) + "\n")


def run_dstune(path: Path, work: Path) -> dict:
    from dstune.config.cleaning import CleaningSection, DedupSettings
    from dstune.data.clean import Cleaner, clean_dataset
    from dstune.data.dedup import duplicates_within
    from dstune.data.labels import LabelRules
    from dstune.data.prepare import fingerprint_dataset
    from dstune.data.table import load_table
    from dstune.data.validate import make_schema

    cleaning = CleaningSection(task="classification", steps=STEPS)
    schema = make_schema("classification", cleaning.fields, LabelRules(cleaning.labels))
    start = time.perf_counter()
    dataset, _ = load_table(str(path), schema, "utf-8", work / "rows.arrow")
    read = time.perf_counter() - start
    start = time.perf_counter()
    cleaned = clean_dataset(dataset, Cleaner(cleaning.steps), schema)
    settings = DedupSettings(near={"threshold": THRESHOLD, "num_perm": NUM_PERM, "shingle": SHINGLE})
    duplicates = duplicates_within(fingerprint_dataset(cleaned, schema, settings), settings)
    work_s = time.perf_counter() - start
    exact = sum(r.startswith("exact") for r in duplicates.values())
    return {
        "read_s": read,
        "work_s": work_s,
        "exact": exact,
        "near": len(duplicates) - exact,
    }


_HALFWIDTH = {**{c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}, 0x3000: 0x20}
_TAG = re.compile(r"<[^<>]+>")
_PII = [
    (
        re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
        "[EMAIL]",
    ),
    (
        re.compile(r"(?<!\d)[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?!\d)"),
        "[ID_CARD]",
    ),
    (re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)"), "[PHONE]"),
]


def plain_clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text.translate(_HALFWIDTH))
    text = html.unescape(_TAG.sub("", text))
    text = re.sub(r"\s+", " ", text).strip()
    for term in sorted(TERMS, key=len, reverse=True):  # longest first, one term at a time
        text = text.replace(term, TERMS[term])
    for pattern, mask in _PII:
        text = pattern.sub(mask, text)
    return text


def run_pandas(path: Path, _work: Path) -> dict:
    import pandas as pd
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    df = pd.read_json(path, lines=True)
    read = time.perf_counter() - start
    start = time.perf_counter()
    df["text"] = df["text"].map(plain_clean)
    key = df["text"].map(lambda t: re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", t).casefold()))
    exact_mask = key.duplicated()
    df = df[~exact_mask]
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    near = 0
    for index, text in zip(df.index, df["text"]):
        minhash = MinHash(num_perm=NUM_PERM)
        minhash.update_batch([text[i : i + SHINGLE].encode("utf-8") for i in range(max(len(text) - SHINGLE + 1, 1))])
        if lsh.query(minhash):
            near += 1
        else:
            lsh.insert(str(index), minhash)
    work_s = time.perf_counter() - start
    return {
        "read_s": read,
        "work_s": work_s,
        "exact": int(exact_mask.sum()),
        "near": near,
    }


def child(impl: str, path: Path) -> None:
    """Run one implementation and print its figures (peak RSS of this process included) as JSON."""
    with tempfile.TemporaryDirectory() as work:
        result = {"dstune": run_dstune, "pandas": run_pandas}[impl](path, Path(work))
    result["peak_rss_mb"] = _peak_rss_kib() / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--child", choices=["dstune", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.jsonl"
        make_documents(args.rows, path)
        size = path.stat().st_size / 2**20
        print(f"{args.rows} documents, {size:.0f} MiB of JSONL")
        results = {}
        for impl in ("dstune", "pandas"):
            cmd = [sys.executable, __file__, "--child", impl, "--data", str(path)]
            results[impl] = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            )
    for impl, r in results.items():
        print(
            f"{impl:>7}: read {r['read_s']:.1f}s | clean+exact+near {r['work_s']:.1f}s = "
            f"{args.rows / r['work_s']:,.0f} rows/s | duplicates exact {r['exact']} near {r['near']} | "
            f"peak RSS {r['peak_rss_mb']:,.0f} MiB"
        )
    d, p = results["dstune"], results["pandas"]
    print(
        f"dstune vs pandas: {p['work_s'] / d['work_s']:.2f}x rows/s, {d['peak_rss_mb'] / p['peak_rss_mb']:.2f}x peak memory"
    )


if __name__ == "__main__":
    main()
