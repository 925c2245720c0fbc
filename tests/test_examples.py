"""Every config shipped in examples/ validates against the schema (a renamed key would break users' copies)."""

from pathlib import Path

import pytest
import yaml

from dstune.config.prepare import load_prepare_settings

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path):
    # data-only configs (no model section) are `dstune data prepare` configs; the others are run configs
    settings = load_prepare_settings(path)
    assert settings.data is not None


def test_there_are_examples_for_every_task_type():
    types = {yaml.safe_load(p.read_text(encoding="utf-8")).get("task", {}).get("type", "sft") for p in EXAMPLES}
    assert {"sft", "classification", "multitask"} <= types
