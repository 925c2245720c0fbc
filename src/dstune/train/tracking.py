"""Experiment tracking: MLflow with an embedded SQLite store by default; TensorBoard and W&B opt-in.

The Trainer's own integrations do the per-step logging (``report_to``); this module only decides
where they write, opens the MLflow run so that dstune can add the resolved config and the final
metrics to it, and closes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from dstune.config.schema import RunConfig

for _name in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{Path(output_dir).resolve().parent / 'mlflow.db'}"


def report_to(config: RunConfig) -> list[str]:
    targets = []
    if config.tracking.mlflow.enabled:
        targets.append("mlflow")
    if config.tracking.tensorboard:
        targets.append("tensorboard")
    if config.tracking.wandb:
        targets.append("wandb")
    return targets


@contextlib.contextmanager
def tracking_run(config: RunConfig, output_dir: Path, is_main: bool = True) -> Iterator[object | None]:
    """Open the MLflow run (main process only) and point the Trainer's integrations at it."""
    if config.tracking.tensorboard:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "tensorboard")
    if not (config.tracking.mlflow.enabled and is_main):
        yield None
        return
    import mlflow

    settings = config.tracking.mlflow
    uri = settings.tracking_uri or default_tracking_uri(output_dir)
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.setdefault("MLFLOW_FLATTEN_PARAMS", "true")
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    if experiment is None:
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        mlflow.create_experiment(settings.experiment, artifact_location=artifacts)
    mlflow.set_experiment(settings.experiment)
    run = mlflow.start_run(run_name=settings.run_name or Path(output_dir).name)
    resolved = Path(output_dir) / "config.yaml"
    if resolved.is_file():  # at the start, so that a run that crashes still shows what it was asked to do
        mlflow.log_artifact(str(resolved))
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run()


def log_summary(run, metrics: dict[str, float]) -> None:
    """Add the final metrics to the open MLflow run (the resolved config was logged when it opened)."""
    if run is None:
        return
    import mlflow

    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    mlflow.log_metrics({f"final/{k}": v for k, v in numeric.items()})


def ui_command(config: RunConfig, output_dir: Path) -> str:
    uri = config.tracking.mlflow.tracking_uri or default_tracking_uri(output_dir)
    return f"mlflow ui --backend-store-uri {uri}"
