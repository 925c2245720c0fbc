"""Several processes (one per GPU, or gloo on CPU) on the one training path, through accelerate.

``accelerate launch -m dstune train cfg.yaml`` (or ``dstune train cfg.yaml --nproc N``, which
re-launches itself that way) starts N copies of the same recipe. The Trainer shards the batches
and averages the gradients; this module adds what the recipe needs around it:

* :func:`init_distributed` joins the process group *before* the data is read, with the config's
  ``training.ddp_timeout`` (the default 30 minutes is what kills runs whose rank 0 tokenises a
  large set while the others wait), and picks gloo when there is no GPU;
* :func:`prepared_once` runs the data preparation on the main process only: it writes the
  tokenized sets to ``<output_dir>/prep/`` and the other processes load them from there after a
  barrier (memory-mapped Arrow files, no second tokenisation, rejected rows written once).

A multi-node run needs ``output_dir`` on a filesystem every node sees (as resuming does anyway).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_DDP_TIMEOUT_S = 3 * 3600
_REST = "fields.pkl"


def world_size() -> int:
    """Processes in this run, from the launcher's environment (torchrun / accelerate launch / MPI)."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


def init_distributed(timeout_s: int = DEFAULT_DDP_TIMEOUT_S):
    """The accelerate ``PartialState`` of this process; joins the process group when launched with several.

    Without CUDA the processes talk over gloo (``ACCELERATE_USE_CPU``, which transformers' TrainingArguments
    honours too, so that the state it rebuilds matches this one).
    """
    import torch
    from accelerate import PartialState

    if world_size() > 1 and not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if world_size() > 1:
        return PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_s))
    return PartialState(cpu=cpu)


def barrier() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def prepared_once(directory: Path, prepare: Callable[[], T], kind: type[T]) -> T:
    """``prepare()`` on the main process, shared with the others through ``directory``.

    ``kind`` is the dataclass ``prepare()`` returns: its ``datasets.Dataset`` fields travel as Arrow folders,
    the others (None, statistics, a label space) pickled. With one process ``prepare()`` simply runs. The
    others wait at a barrier bounded by ``training.ddp_timeout``; if the main process fails meanwhile, the
    launcher (torchrun / accelerate launch) stops them.
    """
    if world_size() == 1:
        return prepare()
    directory = Path(directory)
    if is_main_process():
        result = prepare()
        _save(result, directory)
        barrier()
        return result
    barrier()  # the main process tokenises meanwhile
    return _load(directory, kind)


def _save(result, directory: Path) -> None:
    """Datasets as Arrow folders (memory-mapped when loaded); the rest (stats, label space) in one pickle."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    rest = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if hasattr(value, "save_to_disk"):
            value.save_to_disk(str(directory / f.name))
        else:
            rest[f.name] = value
    with (directory / _REST).open("wb") as fh:
        pickle.dump(rest, fh)


def _load(directory: Path, kind: type[T]) -> T:
    import datasets

    with (directory / _REST).open("rb") as fh:
        values = pickle.load(fh)  # written by this run's main process a moment ago
    for f in dataclasses.fields(kind):
        if f.name not in values:
            values[f.name] = datasets.load_from_disk(str(directory / f.name))
    return kind(**values)
