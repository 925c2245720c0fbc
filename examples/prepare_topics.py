"""Build a real topic-classification set from the `chatterbot-corpus` package (BSD-3), offline.

Each English YAML file of the corpus is one topic (ai, coding, emotion, trivia, ...). Every utterance
(question or answer) becomes a row ``{"text": ..., "label": <topic>}``. Texts are whitespace-normalised
and de-duplicated; a text that appears under two topics is dropped (its label would be ambiguous).
Topics with fewer than ``MIN_ROWS`` distinct texts are left out, large ones are capped at
``MAX_ROWS`` (seeded sample) so that no topic dominates. The rows are split 70/15/15, stratified by
topic, into examples/data/topics_{train,validation,test}.jsonl.

    python examples/prepare_topics.py            # needs: pip install --no-deps chatterbot-corpus
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "examples" / "data"
MIN_ROWS, MAX_ROWS, SEED = 45, 100, 13
SPLITS = {"train": 0.70, "validation": 0.15, "test": 0.15}


def corpus_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("package 'chatterbot_corpus' is missing: pip install --no-deps chatterbot-corpus")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "english"


def texts_by_topic(folder: Path) -> dict[str, list[str]]:
    """Distinct utterances of each topic file; texts found under several topics are dropped."""
    owners: dict[str, set[str]] = defaultdict(set)
    for path in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in doc.get("conversations") or []:
            for turn in conversation:
                text = " ".join(str(turn).split())
                if text:
                    owners[text].add(path.stem)
    topics: dict[str, list[str]] = defaultdict(list)
    for text, names in sorted(owners.items()):
        if len(names) == 1:
            topics[next(iter(names))].append(text)
    return topics


def split_rows(topics: dict[str, list[str]]) -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for topic, texts in sorted(topics.items()):
        if len(texts) < MIN_ROWS:
            continue
        texts = rng.sample(texts, min(len(texts), MAX_ROWS))
        n_val, n_test = round(len(texts) * SPLITS["validation"]), round(len(texts) * SPLITS["test"])
        parts = {"validation": texts[:n_val], "test": texts[n_val : n_val + n_test], "train": texts[n_val + n_test :]}
        for name, part in parts.items():
            splits[name] += [{"text": text, "label": topic} for text in part]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def main() -> None:
    splits = split_rows(texts_by_topic(corpus_dir()))
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        path = OUT / f"topics_{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path.relative_to(ROOT)}: {len(rows)} rows")
    print("topics:", ", ".join(sorted({r["label"] for r in splits["train"]})))


if __name__ == "__main__":
    main()
