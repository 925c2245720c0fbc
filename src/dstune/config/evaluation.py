"""The ``evaluation`` section: how `dstune eval`, `dstune compare` and `dstune report` measure a model.

Every value has a default, so a run config needs no ``evaluation`` section; ``dstune eval`` and
``dstune compare`` take ``--set evaluation.<key>=<value>`` for single values::

    evaluation:
      split: test
      generation: {max_new_tokens: 256, temperature: 0.0, stop: ["\\n\\n"]}
      think: separate              # score <think> apart from the answer | strip | keep
      rouge_tokenize: auto         # auto (jieba for Chinese, words otherwise) | char | jieba | words
      judge:
        base_url: https://api.deepseek.com/v1
        model: deepseek-chat
        api_key_env: DEEPSEEK_API_KEY
        rubrics: [readability, correctness]
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dstune.config.base import Section

BUILTIN_RUBRICS = {
    "readability": "How clear, fluent and well organised is the answer, whatever its correctness? "
    "1 = hard to follow, broken or garbled; 3 = understandable with effort; 5 = clear, fluent and well structured.",
    "correctness": "Does the answer agree with the reference answer in its facts and conclusion? "
    "1 = contradicts it or is wrong; 3 = partly right; 5 = fully consistent with the reference.",
    "helpfulness": "How well does the answer do what the user asked? "
    "1 = ignores or fails the request; 3 = partly useful; 5 = fully addresses it.",
}


class GenerationSettings(Section):
    """How answers are generated (batched, left-padded, with the model's chat template)."""

    max_new_tokens: int = Field(256, gt=0, description="Most tokens generated per answer.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy decoding; above 0 samples with this temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling (with temperature > 0).")
    stop: list[str] = Field([], description="Stop strings: generation ends at the first one, which is cut off.")
    batch_size: int = Field(8, gt=0, description="Prompts generated together (sorted by length to limit padding).")
    seed: int = Field(0, description="Sampling seed (with temperature > 0).")


class JudgeSettings(Section):
    """An OpenAI-compatible chat endpoint that scores answers (DeepSeek's API, a local `dstune serve`, ...)."""

    base_url: str = Field(description="Endpoint root, e.g. https://api.deepseek.com/v1 (POST <base_url>/chat/completions).")
    model: str = Field(description="Judge model name sent in each request.")
    api_key_env: str = Field("DSTUNE_JUDGE_API_KEY", description="Environment variable holding the API key.")
    rubrics: list[str] = Field(
        ["readability"], min_length=1, description=f"Rubrics to score: {', '.join(BUILTIN_RUBRICS)} or custom_rubrics."
    )
    custom_rubrics: dict[str, str] = Field({}, description="Extra rubrics: {name: what a 1 and a 5 mean}.")
    scale: int = Field(5, ge=2, le=10, description="Scores run from 1 to this value.")
    max_concurrent: int = Field(4, gt=0, description="Requests in flight at once.")
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx and connection errors (exponential backoff).")
    malformed_retries: int = Field(1, ge=0, description="Retries of a reply without a usable score; then unscored.")
    backoff_s: float = Field(1.0, ge=0.0, description="First backoff; doubled on each retry (Retry-After wins).")
    timeout_s: float = Field(60.0, gt=0.0, description="Per-request timeout.")
    cache_dir: str | None = Field(
        None, description="Replies cached by (prompt, model, rubric); default ~/.cache/dstune/judge."
    )
    max_examples: int | None = Field(None, gt=0, description="Judge only the first N examples (cost control).")
    pairwise: bool = Field(True, description="compare: also ask which answer is better, in both orders.")

    @model_validator(mode="after")
    def _known_rubrics(self) -> JudgeSettings:
        known = {**BUILTIN_RUBRICS, **self.custom_rubrics}
        unknown = [name for name in self.rubrics if name not in known]
        if unknown:
            raise ValueError(f"unknown rubric(s) {unknown}; choose from {sorted(known)} or define custom_rubrics")
        return self

    def rubric_text(self, name: str) -> str:
        """The description of rubric ``name`` (custom rubrics override built-in ones)."""
        return {**BUILTIN_RUBRICS, **self.custom_rubrics}[name]


class EvaluationSection(Section):
    """`dstune eval` / `compare` / `report`: data split, generation, scoring, error analysis, judge."""

    split: Literal["test", "validation", "train"] = Field(
        "test", description="Data evaluated when --data is not given: data.test (or the prepared test split), "
        "data.validation (or the rows held out by data.eval_split), or data.train."
    )
    max_examples: int | None = Field(None, gt=0, description="Evaluate only the first N examples.")
    generation: GenerationSettings = GenerationSettings()
    think: Literal["separate", "strip", "keep"] = Field(
        "separate",
        description="<think>...</think> in answers: 'separate' scores the final answer and reports think metrics "
        "apart; 'strip' scores the final answer only; 'keep' scores the whole text.",
    )
    bleu_tokenize: Literal["auto", "13a", "zh", "intl", "char"] = Field(
        "auto", description="sacrebleu tokenizer; auto uses 'zh' when references contain Chinese, else '13a'."
    )
    rouge_tokenize: Literal["auto", "char", "jieba", "words"] = Field(
        "auto",
        description="ROUGE units: char (each CJK character, latin words whole), jieba (Chinese word segmentation), "
        "words (whitespace). auto: jieba when references contain Chinese, else words. Stated in metrics.json.",
    )
    normalize_exact_match: bool = Field(
        True, description="Exact match ignores case, surrounding whitespace and runs of inner whitespace."
    )
    near_miss_chrf: float = Field(
        50.0, ge=0.0, le=100.0, description="Generation: a wrong answer with sentence chrF at least this is a near miss."
    )
    near_miss_margin: float = Field(
        0.2, ge=0.0, le=1.0, description="Classification: a prediction whose top-2 probability gap is below this "
        "is a near miss (right or wrong)."
    )
    sample: int = Field(500, ge=0, description="Errors and near misses drawn for review (eval/review.csv).")
    calibration_bins: int = Field(10, ge=2, le=100, description="Classification: bins of the reliability plot and ECE.")
    bootstrap: int = Field(1000, ge=100, description="compare: paired-bootstrap and permutation resamples.")
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="compare: significance level (CI is 1 - alpha).")
    seed: int = Field(0, description="Sampling of review rows and bootstrap resamples.")
    explain: int = Field(0, ge=0, description="Attention heatmaps for the first N examples (eval/explain.html).")
    task_name: str | None = Field(
        None, description="Multi-task runs: the task (multitask.tasks key) whose head is evaluated; default the first."
    )
    judge: JudgeSettings | None = Field(None, description="LLM-as-judge endpoint and rubrics; null: no judge.")
