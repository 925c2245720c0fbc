"""EWC: the Fisher diagonal against a hand computation, the penalty's shape, its effect on training,
and the Fisher chain A -> B -> C across run directories."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dstune.config.continual import EWCSection
from dstune.errors import ConfigError
from dstune.train.continual.ewc import (
    ANCHOR_FILE,
    FISHER_FILE,
    EWCPenalty,
    estimate_fisher,
    load_tensors,
    prepare_ewc,
    trainable_parameters,
)


class TinyClassifier(nn.Module):
    """logits = W x + b, cross-entropy loss: a model whose Fisher can be written down by hand."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(2, 3)

    def forward(self, x, labels=None):
        logits = self.linear(x)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(logits=logits, loss=loss)


XS = torch.tensor([[1.0, -2.0], [0.5, 0.3], [-1.5, 1.0], [2.0, 0.0]])
YS = torch.tensor([0, 2, 1, 2])


def batches(xs=XS, ys=YS):
    return [{"x": x[None], "labels": y[None]} for x, y in zip(xs, ys)]


def hand_fisher(model: TinyClassifier, xs=XS, ys=YS) -> dict[str, torch.Tensor]:
    """Per example: d loss / d W = (p - onehot(y)) x^T and d loss / d b = p - onehot(y); squared, averaged."""
    with torch.no_grad():
        p = (xs @ model.linear.weight.T + model.linear.bias).softmax(-1)
        residual = p - nn.functional.one_hot(ys, 3).float()
        grad_w = residual[:, :, None] * xs[:, None, :]
    return {"linear.weight": grad_w.pow(2).mean(0), "linear.bias": residual.pow(2).mean(0)}


def test_empirical_fisher_matches_the_hand_computed_diagonal():
    model = TinyClassifier()
    fisher = estimate_fisher(model, batches(), trainable_parameters(model), shift=False)
    for name, expected in hand_fisher(model).items():
        torch.testing.assert_close(fisher[name], expected, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # gradients freed as they were squared in


def test_true_fisher_converges_to_the_expectation_over_the_models_own_labels():
    model = TinyClassifier()
    x = torch.tensor([0.7, -1.2])
    with torch.no_grad():
        p = model.linear(x).softmax(-1)
    # E_y~p [(p - e_y)^2] per class, times x^2 for the weights
    expected_b = sum(p[y] * (p - nn.functional.one_hot(torch.tensor(y), 3).float()).pow(2) for y in range(3))
    n = 3000
    fisher = estimate_fisher(model, [{"x": x[None]}] * n, trainable_parameters(model), kind="true", shift=False)
    torch.testing.assert_close(fisher["linear.bias"], expected_b, rtol=0.1, atol=2e-3)
    torch.testing.assert_close(fisher["linear.weight"], expected_b[:, None] * x.pow(2), rtol=0.1, atol=5e-3)


def test_penalty_is_zero_at_the_anchor_and_grows_as_parameters_move():
    model = TinyClassifier()
    params = trainable_parameters(model)
    fisher = estimate_fisher(model, batches(), params, shift=False)
    anchor = {name: p.detach().clone() for name, p in params.items()}
    hook = EWCPenalty(params, fisher, anchor, strength=10.0)
    assert hook.penalty().item() == 0.0
    previous = 0.0
    direction = {name: torch.randn_like(p) for name, p in params.items()}
    for size in (0.01, 0.1, 1.0):
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(anchor[name] + size * direction[name])
        value = hook.penalty().item()
        expected = 0.5 * 10.0 * sum((fisher[n] * (size * direction[n]) ** 2).sum().item() for n in params)
        assert value == pytest.approx(expected, rel=1e-5)
        assert value > previous
        previous = value
    loss, logs = hook(model, {}, None, torch.tensor(1.0))
    assert loss.item() == pytest.approx(1.0 + previous) and logs["ewc_penalty"] == pytest.approx(previous)


def _train_on_new_task(strength: float) -> float:
    """Fit the classifier to a task that conflicts with the Fisher's task; return how far the weights moved."""
    model = TinyClassifier()
    params = trainable_parameters(model)
    fisher = estimate_fisher(model, batches(), params, shift=False)
    anchor = {name: p.detach().clone() for name, p in params.items()}
    hook = EWCPenalty(params, fisher, anchor, strength)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    new_ys = (YS + 1) % 3
    for _ in range(150):
        outputs = model(XS, new_ys)
        loss, _ = hook(model, {}, outputs, outputs.loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return sum((p.detach() - anchor[n]).pow(2).sum().item() for n, p in params.items()) ** 0.5


def test_huge_lambda_keeps_the_protected_parameters_in_place():
    free, held = _train_on_new_task(1e-3), _train_on_new_task(1e5)
    assert free > 1.0, free
    assert held < 0.05 * free, (held, free)


def _run(folder, model, ewc, resume=False):
    return prepare_ewc(ewc, model, lambda: batches(), folder / "continual", resume=resume, shift=False,
                       log=lambda *a: None)


def test_chain_a_b_c_accumulates_fisher_with_decay(tmp_path):
    model = TinyClassifier()
    params = trainable_parameters(model)
    fishers = []
    for n, run in enumerate("abc"):
        if n:  # "training" moved the weights: each run's Fisher is taken where it starts
            with torch.no_grad():
                for p in params.values():
                    p.add_(0.3 * torch.randn_like(p))
        fishers.append(estimate_fisher(model, batches(), params, shift=False))
        previous = str(tmp_path / "abc"[n - 1]) if n else None
        _run(tmp_path / run, model, EWCSection(fisher_data="task.jsonl", previous_fisher=previous, decay=0.5))
    saved = load_tensors(tmp_path / "c" / "continual" / FISHER_FILE)
    f_a, f_b, f_c = fishers
    for name in params:
        torch.testing.assert_close(saved[name], f_c[name] + 0.5 * f_b[name] + 0.25 * f_a[name])
    anchor = load_tensors(tmp_path / "c" / "continual" / ANCHOR_FILE)
    for name, p in params.items():
        torch.testing.assert_close(anchor[name], p.detach())  # anchored where run c started


def test_resume_reloads_the_saved_fisher_and_anchor(tmp_path):
    model = TinyClassifier()
    first = _run(tmp_path / "a", model, EWCSection(fisher_data="task.jsonl"))
    with torch.no_grad():
        model.linear.weight.add_(1.0)  # a resumed run rebuilds the model; its anchor must not move
    again = prepare_ewc(EWCSection(fisher_data="task.jsonl"), model, None, tmp_path / "a" / "continual",
                        resume=True, shift=False, log=lambda *a: None)
    assert again.penalty().item() > 0  # measured from the saved anchor, not from the moved weights
    assert again.penalty().item() == pytest.approx(first.penalty().item())


def test_previous_fisher_of_another_shape_is_a_clear_error(tmp_path):
    _run(tmp_path / "a", TinyClassifier(), EWCSection(fisher_data="task.jsonl"))
    other = TinyClassifier()
    other.linear = nn.Linear(2, 4)
    with pytest.raises(ConfigError, match=r"previous_fisher holds linear\.(weight|bias) with shape"):
        _run(tmp_path / "b", other, EWCSection(fisher_data="task.jsonl", previous_fisher=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="no Fisher file"):
        _run(tmp_path / "c", other, EWCSection(previous_fisher=str(tmp_path / "nowhere")))
