"""``dstune train --nproc N``: the same command again, as N processes started by ``accelerate launch``.

Equivalent to ``accelerate launch --multi_gpu --num_processes N -m dstune train ...`` (accelerate's
multi-process DDP launcher; without a GPU the processes use gloo on the CPU). With
``--accelerate-config`` (one of ``examples/accelerate/*.yaml``: DDP, FSDP, DeepSpeed ZeRO) that file
decides the distributed setup and ``--nproc`` only the number of processes.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(nproc: int, train_args: list[str], accelerate_config: Path | None = None) -> list[str]:
    """The ``accelerate launch`` command line that runs ``dstune <train_args>`` in ``nproc`` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is not None:
        cmd += ["--config_file", str(accelerate_config)]
    else:
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(nproc), "--main_process_port", str(free_port()), "-m", "dstune", *train_args]
    return cmd


def relaunch(nproc: int, train_args: list[str], accelerate_config: Path | None = None) -> int:
    """Run the command in ``nproc`` processes and return its exit code (the first failing process stops all)."""
    return subprocess.run(launch_command(nproc, train_args, accelerate_config), check=False).returncode
