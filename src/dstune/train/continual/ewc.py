"""Elastic weight consolidation (Kirkpatrick et al., 2017) with online accumulation (Schwarz et al., 2018).

The penalty ``lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`` pulls every trainable parameter (LoRA
matrices, full weights or heads) towards its value before this run, in proportion to its diagonal
Fisher information on the earlier task's data. A run saves the Fisher it used (plus ``decay`` times
that of earlier runs) in ``<run>/continual/fisher.safetensors``, so that the next run of a chain
A -> B -> C can add it with ``previous_fisher``.

Memory: the Fisher is summed in place by post-accumulate-grad hooks, which square each gradient
into it and free the gradient at once, so estimating it needs one extra copy of the trainable
parameters (no per-example gradients are kept). Training then holds the Fisher and the anchor for
the parameters whose Fisher is not zero (for a fresh LoRA adapter only the B matrices: the A
matrices get no gradient while B is zero).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from dstune.errors import ConfigError
from dstune.train.continual.data import supervised_logits

if TYPE_CHECKING:
    from dstune.config.continual import EWCSection

FISHER_FILE = "fisher.safetensors"
ANCHOR_FILE = "anchor.safetensors"


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def estimate_fisher(
    model: nn.Module,
    batches: Iterable[dict],
    params: dict[str, nn.Parameter],
    *,
    kind: str = "empirical",
    shift: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher: the mean over examples of the squared gradient of each example's loss.

    Each batch must hold one example. ``empirical`` differentiates the model's own loss on the
    data's labels; ``true`` the cross-entropy of labels sampled from the model's predictive
    distribution at the supervised positions. Dropout is off while estimating.
    """
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    handles = [p.register_post_accumulate_grad_hook(partial(_square_into, fisher[n])) for n, p in params.items()]
    generator = None
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    count = 0
    try:
        with torch.enable_grad():
            for batch in batches:
                outputs = model(**batch)
                if kind == "true":
                    if generator is None:
                        generator = torch.Generator(device=outputs.logits.device).manual_seed(seed)
                    loss = _sampled_label_loss(outputs.logits, batch.get("labels"), shift, generator)
                else:
                    loss = outputs.loss
                loss.backward()
                count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("estimate_fisher got no examples")
    for value in fisher.values():
        value.div_(count)
    return fisher


def _square_into(target: torch.Tensor, param: torch.Tensor) -> None:
    target.addcmul_(param.grad, param.grad)
    param.grad = None


def _sampled_label_loss(logits, labels, shift: bool, generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy against labels drawn from the model's own predictions (the true Fisher's expectation)."""
    rows = supervised_logits(logits, labels, shift).float()
    with torch.no_grad():
        sampled = torch.multinomial(rows.softmax(-1), 1, generator=generator).squeeze(-1)
    return nn.functional.cross_entropy(rows, sampled)


class EWCPenalty:
    """Loss hook adding ``lambda / 2 * sum F (theta - anchor)^2`` over the parameters with a Fisher."""

    needs_logits = False  # reads the parameters only

    def __init__(
        self, params: dict[str, nn.Parameter], fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor],
        strength: float,
    ) -> None:
        self.strength = strength
        self.terms = [
            (params[name], fisher[name].to(params[name].device), anchor[name].to(params[name].device))
            for name in fisher
        ]

    def penalty(self) -> torch.Tensor:
        total = sum(((p - a).pow(2) * f).sum() for p, f, a in self.terms)
        return 0.5 * self.strength * total if self.terms else torch.zeros(())

    def __call__(self, model, inputs, outputs, loss):
        penalty = self.penalty()
        return loss + penalty, {"ewc_penalty": float(penalty.detach())}


def accumulate(
    fisher: dict[str, torch.Tensor], previous: dict[str, torch.Tensor], decay: float,
    params: dict[str, nn.Parameter],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``fisher + decay * previous`` per parameter; previous entries this run does not train are left out.

    Returns the sum and the names left out. A shape mismatch means another model or adapter: a ConfigError.
    """
    total = dict(fisher)
    dropped = []
    for name, old in previous.items():
        param = params.get(name)
        if param is None:
            dropped.append(name)
            continue
        if tuple(old.shape) != tuple(param.shape):
            raise ConfigError(
                f"previous_fisher holds {name} with shape {tuple(old.shape)}, but this run trains it with shape "
                f"{tuple(param.shape)}",
                where="continual.ewc.previous_fisher",
                hint="chain runs of the same model with the same method (LoRA rank and targets)",
            )
        old = old.to(device=param.device, dtype=param.dtype)
        total[name] = total[name] + decay * old if name in total else decay * old
    if previous and len(dropped) == len(previous):
        raise ConfigError(
            "none of the parameters in previous_fisher is trained in this run",
            where="continual.ewc.previous_fisher",
            hint="chain runs of the same model with the same method (LoRA rank and targets)",
        )
    return total, dropped


def fisher_path(reference: str | Path) -> Path:
    """The Fisher file of a run directory, or the given .safetensors file."""
    path = Path(reference).expanduser()
    candidate = path if path.suffix == ".safetensors" else path / "continual" / FISHER_FILE
    if not candidate.is_file():
        raise ConfigError(
            f"no Fisher file at {candidate}",
            where="continual.ewc.previous_fisher",
            hint="give a finished run directory that used continual.ewc, or a .safetensors file",
        )
    return candidate


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as safetensors through a temporary name (the run directory's rule)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({name: t.detach().contiguous().cpu() for name, t in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def prepare_ewc(
    ewc: EWCSection,
    model: nn.Module,
    batches: Callable[[], Iterable[dict]] | None,
    folder: Path,
    *,
    resume: bool,
    shift: bool,
    seed: int = 0,
    log: Callable = print,
) -> EWCPenalty:
    """The EWC hook of a run: Fisher on ``batches()`` (the earlier task's examples, one per batch) plus
    ``decay`` times ``previous_fisher``, anchored at the current parameters, both saved in ``folder``.

    On resume, the Fisher and anchor saved by the interrupted run are loaded instead.
    """
    params = trainable_parameters(model)
    if resume and (folder / FISHER_FILE).is_file() and (folder / ANCHOR_FILE).is_file():
        fisher, anchor = load_tensors(folder / FISHER_FILE), load_tensors(folder / ANCHOR_FILE)
        log(f"ewc: Fisher and anchor of {len(fisher)} tensors reloaded from {folder}")
        return EWCPenalty(params, fisher, anchor, ewc.lambda_)
    fisher: dict[str, torch.Tensor] = {}
    if batches is not None:
        fisher = estimate_fisher(model, batches(), params, kind=ewc.fisher, shift=shift, seed=seed)
    if ewc.previous_fisher:
        previous = load_tensors(fisher_path(ewc.previous_fisher))
        fisher, dropped = accumulate(fisher, previous, ewc.decay, params)
        if dropped:
            log(f"[yellow]note:[/] ewc: {len(dropped)} tensors of previous_fisher are not trained here; left out")
    fisher = {name: f for name, f in fisher.items() if bool(f.any())}
    anchor = {name: params[name].detach().clone() for name in fisher}
    metadata = {"kind": ewc.fisher, "decay": str(ewc.decay), "previous": str(ewc.previous_fisher or "")}
    from dstune.train.distributed import is_main_process

    if is_main_process():  # every process computes the same Fisher; one writes it
        save_tensors(folder / FISHER_FILE, fisher, metadata)
        save_tensors(folder / ANCHOR_FILE, anchor)
    covered = sum(f.numel() for f in fisher.values())
    mean = sum(float(f.float().sum()) for f in fisher.values()) / max(covered, 1)
    log(f"ewc: {ewc.fisher} Fisher over {covered:,} of {sum(p.numel() for p in params.values()):,} trainable "
        f"parameters (mean {mean:.3g}), lambda {ewc.lambda_:g}; saved to {folder / FISHER_FILE}")
    return EWCPenalty(params, fisher, anchor, ewc.lambda_)
