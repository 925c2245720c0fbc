"""The run config: one small pydantic model per YAML section.

Every field carries its help text; unknown keys are errors (``extra="forbid"``), and the
few defaults that depend on another section (the learning rate depends on the method) are
resolved in :meth:`RunConfig._resolve_defaults`, so the saved ``config.yaml`` holds every value
that the run actually used.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dstune.config.base import Section
from dstune.config.cleaning import CleaningSection, token_rows_problem
from dstune.config.continual import ContinualSection
from dstune.config.deploy import DeploySection
from dstune.config.evaluation import EvaluationSection
from dstune.config.multitask import MultitaskSection
from dstune.config.task import LabelledTaskFields


class ModelSection(Section):
    """Which model to fine-tune and how to load it."""

    name: str = Field(
        description="Hub id (deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B), a short alias from "
        "`dstune.models.registry`, a local directory in Hugging Face format, or a .gguf file."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto keeps the checkpoint's dtype (float32 on CPU)."
    )
    trust_remote_code: bool = Field(
        False, description="Run modelling code shipped with the checkpoint. Off unless you trust it."
    )
    attn_implementation: str | None = Field(
        None, description="eager | sdpa | flash_attention_2; None lets transformers choose."
    )
    add_tokens: list[str] | str | None = Field(
        None,
        description="Domain terms to add to the tokenizer: a list, or a text file with one term per line. "
        "Each new embedding row starts as the mean of the pieces the term used to split into; under LoRA "
        "exactly those rows are trained (peft trainable_token_indices). Works for every task type.",
    )


class TaskSection(LabelledTaskFields):
    """What the model learns; the label settings apply to classification and token_classification."""

    type: Literal["sft", "classification", "token_classification", "multitask"] = Field(
        "sft",
        description="sft: causal-LM supervised fine-tuning; classification: text → label(s); "
        "token_classification: BIO tagging; multitask: one backbone, one head per task (see `multitask`).",
    )


class DataSection(Section):
    """Where the examples come from and how they become token sequences."""

    train: str | None = Field(
        None, description="Training data: .jsonl/.json/.csv/.parquet file or HF dataset name (multitask: per task)."
    )
    validation: str | None = Field(None, description="Validation data; if unset, `eval_split` of train.")
    eval_split: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of train held out for validation when no file is given."
    )
    format: Literal["auto", "messages", "alpaca", "sharegpt", "text"] = Field(
        "auto", description="Row format; auto detects it from the first row's keys."
    )
    max_length: int = Field(1024, gt=8, description="Tokens per example; longer rows are truncated and counted.")
    max_samples: int | None = Field(None, gt=0, description="Use only the first N training rows.")
    chat_template: str | None = Field(
        None, description="None: the tokenizer's own template; 'chatml'; or a Jinja template string."
    )
    system_prompt: str | None = Field(None, description="System message added to rows that have none.")
    think_history: Literal["strip", "keep"] = Field(
        "strip",
        description="<think> blocks of earlier assistant turns: 'strip' renders them as the chat template "
        "does at inference (DeepSeek-R1 drops them); 'keep' trains on them too. The last turn always keeps its.",
    )
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="fail: stop at malformed rows; skip: write them to rejected.jsonl and go on."
    )
    encoding: str = Field(
        "utf-8", description="Text encoding of the data files (UTF-8 with or without BOM by default; e.g. gbk, gb18030)."
    )
    test: str | None = Field(None, description="Test data (data prepare); if unset, `cleaning.split.test` of train.")


class MethodSection(Section):
    """How weights are updated: full, lora, qlora or freeze."""

    type: Literal["full", "lora", "qlora", "freeze"] = Field("lora", description="Fine-tuning method.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="LoRA dropout.")
    targets: list[str] | Literal["auto", "all-linear"] = Field(
        "auto",
        description="Module names to adapt; auto uses the architecture's defaults (see dstune.models.registry).",
    )
    trainable_layers: int = Field(2, gt=0, description="freeze: number of last decoder layers to train.")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    bits: Literal[4, 8] = Field(4, description="qlora: quantisation bits (bitsandbytes).")
    frozen_dtype: Literal["bfloat16"] | None = Field(
        None,
        description="lora/qlora: store the frozen base Linear and Embedding weights in this dtype and run "
        "their matmuls in it, while activations, norms, attention, loss and the adapters stay in "
        "model.dtype (float32 on CPU): half the weight memory, and faster on CPUs with AMX/AVX512-BF16; "
        "on CPUs without native bf16 (AVX2 only) bf16 matmuls are emulated and much slower, and the run says so. "
        "Measure with benchmarks/sft_throughput.py.",
    )

    @model_validator(mode="after")
    def _frozen_dtype_needs_adapters(self) -> MethodSection:
        if self.frozen_dtype and self.type not in ("lora", "qlora"):
            raise ValueError(
                f"method.frozen_dtype applies to lora and qlora (the base weights are frozen there); "
                f"method.type is {self.type!r}: remove frozen_dtype or use model.dtype: bfloat16"
            )
        return self


class TrainingSection(Section):
    """Optimisation, evaluation and checkpointing (mapped onto transformers.TrainingArguments)."""

    epochs: float = Field(3.0, gt=0, description="Training epochs (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimiser steps; -1 means use epochs.")
    learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate; default 2e-4 for lora/qlora, 1e-5 for full/freeze."
    )
    batch_size: int = Field(4, gt=0, description="Examples per device per step.")
    eval_batch_size: int | None = Field(None, gt=0, description="Defaults to batch_size.")
    gradient_accumulation_steps: int = Field(1, gt=0)
    lr_scheduler: str = Field("cosine", description="Any transformers scheduler name.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of steps for linear warmup.")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping; 0 disables it.")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Override every dropout in the model config and the LoRA dropout."
    )
    eval_strategy: Literal["steps", "epoch", "no"] = Field("epoch")
    eval_steps: int | None = Field(None, gt=0, description="With eval_strategy=steps; defaults to save_steps.")
    save_strategy: Literal["steps", "epoch", "no"] = Field("epoch")
    save_steps: int = Field(500, gt=0)
    save_total_limit: int | None = Field(2, gt=0, description="Checkpoints kept (the best one is always kept).")
    logging_steps: int = Field(10, gt=0)
    early_stopping_patience: int | None = Field(
        3, ge=1, description="Evaluations without improvement before stopping; null disables early stopping."
    )
    metric_for_best: str = Field("eval_loss", description="Metric that picks the best checkpoint.")
    greater_is_better: bool | None = Field(None, description="Defaults to False for *loss metrics, else True.")
    packing: bool = Field(
        True,
        description="Causal-LM SFT: concatenate each batch into one row without padding, position ids reset per "
        "example (attention stays within each example; same loss as padded batches). Other tasks pad.",
    )
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together (less padding; without packing); order stays "
        "seeded."
    )
    gradient_checkpointing: bool = Field(False)
    torch_compile: bool = Field(False, description="Compile the model with torch.compile (first steps are slower).")
    seed: int = Field(42)
    ddp_timeout: int = Field(
        10800, gt=0, description="Several processes: seconds a process waits for the others (e.g. while the main "
        "one tokenises the data) before the run fails; NCCL/gloo's own default is 1800."
    )

    @field_validator("lr_scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        from transformers import SchedulerType

        names = [s.value for s in SchedulerType]
        if value not in names:
            raise ValueError(f"unknown scheduler {value!r}; choose one of {', '.join(names)}")
        return value


class MlflowSection(Section):
    enabled: bool = Field(True, description="Log to MLflow (embedded SQLite store, no server needed).")
    tracking_uri: str | None = Field(
        None, description="Default: sqlite:///<parent of output_dir>/mlflow.db. Set to use a server."
    )
    experiment: str = Field("dstune")
    run_name: str | None = Field(None, description="Defaults to the output directory's name.")


class TrackingSection(Section):
    mlflow: MlflowSection = MlflowSection()
    tensorboard: bool = Field(False, description="Also write TensorBoard logs to <output_dir>/tensorboard.")
    wandb: bool = Field(False, description="Also log to Weights & Biases (needs `wandb login`).")


class RunConfig(Section):
    """The whole run: one YAML file."""

    model: ModelSection
    task: TaskSection = TaskSection()
    data: DataSection = DataSection()
    method: MethodSection = MethodSection()
    training: TrainingSection = TrainingSection()
    tracking: TrackingSection = TrackingSection()
    cleaning: CleaningSection | None = Field(None, description="Data preparation; its steps also run in `train`.")
    continual: ContinualSection | None = Field(None, description="EWC, distillation, replay; forgetting measured.")
    deploy: DeploySection | None = Field(None, description="export, bench and serve settings (defaults if unset).")
    multitask: MultitaskSection | None = Field(None, description="task.type multitask: tasks, sampling, weighting.")
    evaluation: EvaluationSection | None = Field(
        None, description="dstune eval / compare / report: split, generation, metrics, judge (defaults if unset)."
    )
    output_dir: str = Field(description="Run directory (created).")

    @model_validator(mode="after")
    def _resolve_defaults(self) -> RunConfig:
        training = self.training
        self._check_task_data()
        self._check_cleaning()
        if self.task.type == "multitask" and "metric_for_best" not in training.model_fields_set:
            training.metric_for_best = "eval_combined_score"
        if training.learning_rate is None:
            training.learning_rate = 2e-4 if self.method.type in ("lora", "qlora") else 1e-5
        if training.greater_is_better is None:
            training.greater_is_better = not training.metric_for_best.endswith("loss")
        if training.eval_batch_size is None:
            training.eval_batch_size = training.batch_size
        if training.eval_strategy == "steps" and training.eval_steps is None:
            training.eval_steps = training.save_steps
        if "save_strategy" not in training.model_fields_set and training.eval_strategy != "no":
            training.save_strategy = training.eval_strategy
        if "save_steps" not in training.model_fields_set and training.eval_steps is not None:
            training.save_steps = training.eval_steps
        if training.dropout is not None:
            self.method.dropout = training.dropout
        if not self._has_validation_files() and self.data.eval_split == 0.0:
            training.eval_strategy = "no"  # nothing to evaluate on
        if training.eval_strategy == "no" and "early_stopping_patience" not in training.model_fields_set:
            training.early_stopping_patience = None
        if training.early_stopping_patience and training.eval_strategy == "no":
            raise ValueError(
                "training.early_stopping_patience needs evaluation: set training.eval_strategy "
                "or training.early_stopping_patience: null"
            )
        if training.early_stopping_patience and training.eval_strategy != training.save_strategy:
            raise ValueError(
                "early stopping keeps the best checkpoint, so training.save_strategy must equal "
                f"training.eval_strategy (got {training.save_strategy!r} and {training.eval_strategy!r})"
            )
        return self

    def _check_task_data(self) -> None:
        """data.train for single tasks; multitask.tasks (and no data.train) for multitask."""
        if self.task.type == "multitask":
            if self.multitask is None:
                raise ValueError("task.type multitask needs a `multitask` section with `tasks`")
            if self.data.train or self.data.validation:
                raise ValueError("multitask reads each task's data from multitask.tasks.<name>.train/validation; "
                                 "remove data.train/data.validation")
        elif self.multitask is not None:
            raise ValueError(f"the `multitask` section needs task.type: multitask (got {self.task.type!r})")
        elif not self.data.train:
            raise ValueError("data.train is required: the training data file or HF dataset name")

    def _check_cleaning(self) -> None:
        """Cleaning steps that `train` cannot apply to a token-classification task stop the run here."""
        if self.cleaning is None or not self.cleaning.steps:
            return
        if self.task.type == "token_classification":
            problem = token_rows_problem(self.cleaning.steps)
        elif self.multitask is not None:
            token_tasks = [name for name, task in self.multitask.tasks.items() if task.type == "token_classification"]
            rows = ", ".join(f"multitask.tasks.{name}" for name in token_tasks) + " rows"
            problem = token_rows_problem(self.cleaning.steps, rows, multitask=True) if token_tasks else None
        else:
            problem = None
        if problem:
            raise ValueError(problem)

    def _has_validation_files(self) -> bool:
        if self.multitask is not None:
            return any(task.validation for task in self.multitask.tasks.values())
        return self.data.validation is not None
