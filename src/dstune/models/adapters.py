"""Apply the fine-tuning method to a loaded model, and verify what peft did.

``full`` trains every weight; ``freeze`` only the last N decoder layers; ``lora``/``qlora`` add a
peft LoRA adapter. LoRA targets are resolved here against the model's own module names, not left
to peft's suffix matching: a misspelt target is a config error, default targets a checkpoint lacks
are skipped with a note, and what peft adapted is checked against what was planned.

DeepSeek-V2/V3 on transformers 5: peft's v4→v5 MoE conversion (run when an adapter is created and
when it is loaded) rewrites every target named ``gate_proj``/``up_proj``/``down_proj`` into the
fused routed-expert parameters, so the dense MLP and the shared experts would silently get no LoRA.
dstune sees that on a meta-device copy of the model and targets those Linear weights through
``target_parameters`` with their full names instead (peft's ParamWrapper), which the conversion
leaves alone, so the adapter still loads with plain ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dstune.config.schema import MethodSection
from dstune.errors import ConfigError, ModelError
from dstune.models.fast_dropout import use_fast_dropout
from dstune.models.frozen_precision import cpu_has_native_bf16, use_low_precision_frozen
from dstune.models.registry import default_lora_targets

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel
    from rich.table import Table

EXPERTS = "experts"
"""Target name (and module name) of the routed MoE experts; adapted only when named explicitly."""


@dataclass
class AdapterReport:
    """What the method made trainable: totals, a breakdown by module group, and notes for the user."""

    method: str
    trainable_params: int
    total_params: int
    groups: list[dict[str, Any]] = field(default_factory=list)  # {"group", "modules", "trainable_params"}
    notes: list[str] = field(default_factory=list)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (written to ``trainable_params.json``)."""
        return {**asdict(self), "trainable_percent": round(self.trainable_percent, 4)}

    def table(self) -> Table:
        """A rich table: one row per module group, totals in the footer."""
        from rich.table import Table

        table = Table(title=f"Trainable parameters ({self.method})", show_footer=True)
        table.add_column("module group", footer="total")
        table.add_column("modules", justify="right", footer=str(sum(g["modules"] for g in self.groups)))
        table.add_column(
            "trainable params",
            justify="right",
            footer=f"{self.trainable_params:,} / {self.total_params:,} ({self.trainable_percent:.3f}%)",
        )
        for group in self.groups:
            table.add_row(group["group"], str(group["modules"]), f"{group['trainable_params']:,}")
        return table


@dataclass(frozen=True)
class AdapterTask:
    """What a task adds to the method: peft's task type, whole modules to train and save (task heads such
    as ``score``/``classifier``: peft ``modules_to_save``, never LoRA targets) and embedding rows to train
    (new tokens: peft ``trainable_token_indices``, module name → row ids)."""

    task_type: str | None = "CAUSAL_LM"  # None: a plain PeftModel (any architecture)
    heads: tuple[str, ...] = ()
    token_rows: dict[str, list[int]] | None = None


@dataclass(frozen=True)
class _TargetPlan:
    """What LoRA should adapt: Linear modules (full names) and parameters (full names, via ParamWrapper)."""

    modules: tuple[str, ...]
    parameters: tuple[str, ...]
    notes: tuple[str, ...] = ()


def apply_method(
    model: nn.Module, method: MethodSection, *, user_targets_given: bool | None = None, task: AdapterTask | None = None
) -> tuple[nn.Module, AdapterReport]:
    """Make ``model`` trainable as ``method`` says; return it (a PeftModel for lora/qlora) and a report.

    ``user_targets_given`` says whether ``method.targets`` names came from the user (a name that
    matches nothing is a :class:`ConfigError`) or are defaults (skipped with a note). By default a
    list counts as the user's and "auto" as the defaults. ``task`` adds task heads and new token rows
    (see :class:`AdapterTask`). Gradient checkpointing is left to the caller.
    """
    task = task or AdapterTask()
    notes: list[str] = []
    if method.type == "full":
        model.requires_grad_(True)
    elif method.type == "freeze":
        _freeze_all_but_last_layers(model, method.trainable_layers)
        for name, module in model.named_modules():
            if _leaf(name) in task.heads:
                module.requires_grad_(True)
        if task.token_rows:
            notes.append("freeze: the added tokens keep their initial embeddings (mean of their pieces); "
                         "use lora or full to train them")
    else:
        given = isinstance(method.targets, list) if user_targets_given is None else user_targets_given
        model, notes = _apply_lora(model, method, given, task)
    return model, build_report(model, method.type, notes)


# --- full / freeze ---------------------------------------------------------------------------


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's blocks: ``model.get_decoder().layers``, else the ModuleList holding most parameters."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    lists = [module for module in model.modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ModelError(
            f"cannot find the decoder layers of {type(model).__name__}", hint="use method.type: lora or full"
        )
    return max(lists, key=lambda layers: sum(p.numel() for p in layers.parameters()))


def _freeze_all_but_last_layers(model: nn.Module, count: int) -> None:
    """Freeze everything except the last ``count`` decoder layers."""
    layers = find_decoder_layers(model)
    if count > len(layers):
        raise ConfigError(
            f"trainable_layers is {count} but the model has only {len(layers)} decoder layers",
            where="method.trainable_layers",
            hint=f"set it to at most {len(layers)}, or use method.type: full",
        )
    model.requires_grad_(False)
    for layer in layers[len(layers) - count :]:
        layer.requires_grad_(True)


# --- lora / qlora ----------------------------------------------------------------------------


def _apply_lora(
    model: nn.Module, method: MethodSection, user_given: bool, task: AdapterTask
) -> tuple[PeftModel, list[str]]:
    """Plan the targets (task heads excluded), route around peft's MoE rewrite, build the adapter and check it."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    plan = _plan_targets(model, method.targets, user_given)
    plan = replace(plan, modules=tuple(m for m in plan.modules if not set(m.split(".")) & set(task.heads)))
    plan = _route_around_moe_rewrite(model, method, plan, user_given)
    config, notes = _final_lora_config(method, plan, task)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # gradient checkpointing needs inputs that require grad
    peft_model = get_peft_model(model, config)
    _verify_adapted(peft_model, plan)
    if config.lora_dropout != method.dropout:
        _restore_linear_dropout(peft_model, method.dropout)
    use_fast_dropout(peft_model)  # same dropout, cheaper mask on CPU
    if method.frozen_dtype:
        low = use_low_precision_frozen(peft_model, getattr(torch, method.frozen_dtype))
        notes.append(f"frozen weights in {method.frozen_dtype}: {low['parameters']:,} parameters in "
                     f"{low['modules']} Linear/Embedding modules; activations and adapters keep their dtype")
        on_cpu = next(peft_model.parameters()).device.type == "cpu"
        if on_cpu and method.frozen_dtype == "bfloat16" and cpu_has_native_bf16() is False:
            notes.append("this CPU has no native bf16 (AVX512-BF16/AMX): its bf16 matmuls are emulated and far "
                         "slower than float32; remove method.frozen_dtype here")
    if task.token_rows:
        # The new rows are in the adapter (trainable tokens); without this, peft would also save the whole
        # resized embedding matrices, because the vocabulary no longer matches the base model's.
        peft_model.save_pretrained = functools.partial(peft_model.save_pretrained, save_embedding_layers=False)
    return peft_model, [*plan.notes, *notes]


def _plan_targets(model: nn.Module, targets: list[str] | str, user_given: bool) -> _TargetPlan:
    """Resolve target names to full module/parameter names; unmatched user names are errors."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    linear = _linear_modules(model)
    names = default_lora_targets(model_type) if targets == "auto" else targets
    if names == "all-linear":
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        names = sorted({_leaf(name) for name, module in linear.items() if module is not output})
    modules: dict[str, None] = {}
    parameters: dict[str, None] = {}
    unmatched = []
    for name in names:
        found_modules, found_parameters = _match_target(model, linear, name)
        modules.update(dict.fromkeys(found_modules))
        parameters.update(dict.fromkeys(found_parameters))
        if not found_modules and not found_parameters:
            unmatched.append(name)
    if unmatched and user_given:
        raise _unmatched_targets_error(model, linear, unmatched)
    notes = [f"default LoRA targets {', '.join(unmatched)} match no layer of this model; skipped"] if unmatched else []
    if not modules and not parameters:
        raise ConfigError(
            f"the LoRA targets select no layer of this {model_type or 'unknown'} model",
            where="method.targets",
            hint=f"list targets from: {', '.join(_target_choices(model, linear))}; or use all-linear",
        )
    return _TargetPlan(tuple(modules), tuple(parameters), tuple(notes))


def _linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Linear-like modules by full name, routed experts excluded (they are adapted only via ``experts``)."""
    from transformers.pytorch_utils import Conv1D

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D) and EXPERTS not in name.split(".")
    }


def _match_target(model: nn.Module, linear: dict[str, nn.Module], target: str) -> tuple[list[str], list[str]]:
    """Modules and parameters a target name selects: equal to it, or ending with "." + it."""
    if _leaf(target) != EXPERTS:
        return [name for name in linear if _name_matches(name, target)], []
    modules, parameters = [], []
    for name, experts in model.named_modules():
        if not _name_matches(name, target):
            continue
        parameters += [f"{name}.{pname}" for pname, p in experts.named_parameters(recurse=False) if p.dim() == 3]
        modules += [f"{name}.{sub}" for sub, child in experts.named_modules() if isinstance(child, nn.Linear)]
    return modules, parameters


def _unmatched_targets_error(model: nn.Module, linear: dict[str, nn.Module], unmatched: list[str]) -> ConfigError:
    """A ConfigError naming each bad target, with a did-you-mean and the names that exist."""
    choices = _target_choices(model, linear)
    described = []
    for name in unmatched:
        guess = difflib.get_close_matches(_leaf(name), choices, n=1, cutoff=0.6)
        described.append(f"{name!r}" + (f" (did you mean {guess[0]!r}?)" if guess else ""))
    model_type = getattr(getattr(model, "config", None), "model_type", "this")
    listed = ", ".join(described)
    subject = f"LoRA target {listed} matches" if len(described) == 1 else f"LoRA targets {listed} match"
    return ConfigError(
        f"{subject} no Linear layer of this {model_type} model",
        where="method.targets",
        hint=f"use names from: {', '.join(choices)}; or targets: auto / all-linear",
    )


def _target_choices(model: nn.Module, linear: dict[str, nn.Module]) -> list[str]:
    """Leaf names a user can target: the Linear layers, plus ``experts`` on an MoE model."""
    choices = sorted({_leaf(name) for name in linear})
    has_experts = any(_leaf(name) == EXPERTS for name, _ in model.named_modules())
    return [*choices, EXPERTS] if has_experts else choices


def _route_around_moe_rewrite(
    model: nn.Module, method: MethodSection, plan: _TargetPlan, user_given: bool
) -> _TargetPlan:
    """Move to ``target_parameters`` the planned Linear modules peft would not adapt as modules."""
    skipped = _modules_peft_would_skip(model, method, plan)
    if not skipped:
        return plan
    quantized = [name for name in skipped if not model.get_submodule(name).weight.dtype.is_floating_point]
    notes = list(plan.notes)
    if quantized and user_given:
        raise ConfigError(
            f"peft cannot adapt {', '.join(_groups(quantized))} of this quantized model: it rewrites these "
            "targets to the routed experts, and its parameter LoRA cannot wrap 4/8-bit weights",
            where="method.targets",
            hint="drop gate_proj/up_proj/down_proj from method.targets, or use method.type: lora",
        )
    if quantized:
        notes.append(
            f"{', '.join(_groups(quantized))} not adapted: peft rewrites these targets to the routed experts "
            "and cannot wrap their quantized weights as parameters"
        )
    moved = [name for name in skipped if name not in quantized]
    if moved:
        notes.append(
            f"{', '.join(_groups(moved))}: adapted through peft target_parameters, because peft's MoE "
            "conversion would move these targets to the routed experts"
        )
    return _TargetPlan(
        modules=tuple(name for name in plan.modules if name not in skipped),
        parameters=(*plan.parameters, *(f"{name}.weight" for name in moved)),
        notes=tuple(notes),
    )


def _modules_peft_would_skip(model: nn.Module, method: MethodSection, plan: _TargetPlan) -> list[str]:
    """Planned modules that peft leaves without LoRA, found by building the adapter on a meta-device copy."""
    from peft import get_peft_model

    with torch.device("meta"):
        skeleton = type(model)(copy.deepcopy(model.config))
    probe_config = _lora_config(method, plan, dropout=0.0, use_dora=False, task=AdapterTask(task_type=None))
    with warnings.catch_warnings():  # peft's warnings about this dry run would only confuse
        warnings.simplefilter("ignore")
        adapted, _ = adapted_targets(get_peft_model(skeleton, probe_config, low_cpu_mem_usage=True))
    return [name for name in plan.modules if name not in adapted]


def _final_lora_config(method: MethodSection, plan: _TargetPlan, task: AdapterTask) -> tuple[LoraConfig, list[str]]:
    """The LoraConfig to train with; ParamWrapper targets force dropout 0 (noted) and rule out DoRA."""
    if not plan.parameters:
        return _lora_config(method, plan, dropout=method.dropout, use_dora=method.use_dora, task=task), []
    wrapped = ", ".join(_groups(plan.parameters))
    if method.use_dora:
        raise ConfigError(
            f"DoRA does not work with peft's parameter LoRA (ParamWrapper), needed here for {wrapped}",
            where="method.use_dora",
            hint="set method.use_dora: false, or list method.targets without MLP/expert projections",
        )
    notes = []
    if method.dropout > 0:
        notes.append(
            f"lora dropout {method.dropout} on the Linear adapters, 0 on {wrapped}: peft's ParamWrapper refuses "
            "dropout (adapter_config.json says 0; dropout only acts in training)"
        )
    return _lora_config(method, plan, dropout=0.0, use_dora=False, task=task), notes


def _restore_linear_dropout(peft_model: PeftModel, p: float) -> None:
    """Give the Linear LoRA layers the configured input dropout that one LoraConfig could not express.

    peft's config has one ``lora_dropout`` for the whole adapter and its ParamWrapper refuses any, so the
    config says 0 when parameters are wrapped; the Linear layers (MLA projections, ...) take dropout fine.
    """
    from peft.tuners.lora.layer import ParamWrapper

    for module in peft_model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict) and not isinstance(module, ParamWrapper):
            for name in dropouts:
                dropouts[name] = nn.Dropout(p)


def _lora_config(
    method: MethodSection, plan: _TargetPlan, *, dropout: float, use_dora: bool, task: AdapterTask | None = None
) -> LoraConfig:
    from peft import LoraConfig

    task = task or AdapterTask()
    return LoraConfig(
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=dropout,
        use_rslora=method.use_rslora,
        use_dora=use_dora,
        target_modules=list(plan.modules),
        target_parameters=list(plan.parameters) or None,
        task_type=task.task_type,
        modules_to_save=list(task.heads) or None,
        trainable_token_indices=task.token_rows,
    )


def adapted_targets(peft_model: nn.Module) -> tuple[set[str], set[str]]:
    """Full names of the modules peft put LoRA on, and of the parameters it wrapped (ParamWrapper)."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules, parameters = set(), set()
    for name, module in _base_model(peft_model).named_modules():
        if not isinstance(module, BaseTunerLayer) or isinstance(module, TrainableTokensLayer):
            continue
        parameter = getattr(module, "parameter_name", None)
        if parameter:
            parameters.add(f"{_strip_base_layer(name)}.{parameter}")
        else:
            modules.add(_strip_base_layer(name))
    return modules, parameters


def _verify_adapted(peft_model: nn.Module, plan: _TargetPlan) -> None:
    """Fail loudly if peft adapted anything other than the plan (a dstune bug or a peft change)."""
    modules, parameters = adapted_targets(peft_model)
    expected = set(plan.modules) | set(plan.parameters)
    got = modules | parameters
    if got != expected:
        raise RuntimeError(
            "peft adapted different layers than dstune planned: "
            f"missing {sorted(expected - got)}, unexpected {sorted(got - expected)}"
        )


# --- report ----------------------------------------------------------------------------------


def build_report(model: nn.Module, method: str, notes: list[str]) -> AdapterReport:
    """Count trainable parameters, grouped by module path with layer indices replaced by ``*``."""
    base = _base_model(model)
    tuner_labels = _tuner_labels(base)
    groups: dict[str, dict[str, Any]] = {}
    trainable = total = 0
    for name, param in base.named_parameters():
        count = _numel(param)
        total += count
        if not param.requires_grad:
            continue
        trainable += count
        owner, label = _owner(name, tuner_labels)
        group = groups.setdefault(_wildcard(label), {"owners": set(), "params": 0})
        group["owners"].add(owner)
        group["params"] += count
    rows = [{"group": g, "modules": len(v["owners"]), "trainable_params": v["params"]} for g, v in groups.items()]
    return AdapterReport(method, trainable, total, rows, list(notes))


def _tuner_labels(base: nn.Module) -> dict[str, str]:
    """For each LoRA layer (by its module name): the name of what it adapts, e.g. ``...mlp.experts.down_proj``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    labels = {}
    for name, module in base.named_modules():
        if isinstance(module, BaseTunerLayer):
            parameter = getattr(module, "parameter_name", None)
            suffix = f".{parameter}" if parameter and parameter != "weight" else ""
            labels[name] = _strip_base_layer(name) + suffix
    return labels


def _owner(param_name: str, tuner_labels: dict[str, str]) -> tuple[str, str]:
    """The module a parameter belongs to (the innermost LoRA layer around it, else its own module) and its label."""
    parts = param_name.split(".")[:-1]
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in tuner_labels:
            return prefix, tuner_labels[prefix]
    module = ".".join(parts) or param_name
    return module, module


def _numel(param: torch.Tensor) -> int:
    """Parameter count; bitsandbytes 4-bit weights pack two values per byte (as peft counts them)."""
    if type(param).__name__ == "Params4bit":
        return param.numel() * 2 * param.element_size()
    return param.numel()


def _groups(names: tuple[str, ...] | list[str]) -> list[str]:
    """Distinct module names with layer indices replaced by ``*`` (a Linear's ``.weight`` dropped), in order."""
    return list(dict.fromkeys(_wildcard(name.removesuffix(".weight")) for name in names))


def _wildcard(name: str) -> str:
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", name)


def _name_matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _strip_base_layer(name: str) -> str:
    return ".".join(part for part in name.split(".") if part != "base_layer")


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
