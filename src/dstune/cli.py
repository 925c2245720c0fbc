"""The `dstune` command line: arguments only, the work happens in the workflow modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console

from dstune.errors import DstuneError

app = typer.Typer(
    name="dstune",
    help="Fine-tune DeepSeek (and any Hugging Face) models: data → train → evaluate → ship.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(stderr=False)
_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command(
    epilog="Examples:\n\n"
    "  dstune train examples/quickstart.yaml\n\n"
    "  dstune train cfg.yaml --set training.epochs=1 --set method.r=8\n\n"
    "  dstune train runs/demo/config.yaml --resume",
)
def train(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).", show_default=False)],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: --set training.epochs=1 (repeatable)."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in output_dir.")] = False,
) -> None:
    """Load and clean the data, build the model, fine-tune, evaluate and save the run directory."""
    from dstune.config import load_config
    from dstune.train.recipe import train as run_training
    from dstune.train.summary import print_summary

    cfg = load_config(config, set_ or [])
    result = run_training(cfg, resume=resume, log=console.print)
    print_summary(result, console)


def main() -> None:
    """Console-script entry point: user errors become one clear message and a non-zero exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except DstuneError as exc:
        if _state["debug"]:
            raise
        console.print(f"[bold red]error[/] {exc.render()}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted: the last saved checkpoint can be resumed with --resume")
        sys.exit(130)
