"""Tests for README.md: the "Three calls" example runs, and the quick-start commands match CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HEADING = "## Three calls: wrap, set targets, export"
DEMO_COMMAND = "pip install torch==2.13.0 && pip install -e . && hwnas demo"
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q'


def _section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.M | re.S)


def test_three_calls_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _blocks(_section(README.read_text(), HEADING), "python")
    assert blocks, f"no ```python block under {HEADING!r} in README.md"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == "True True"
    onnx_file = tmp_path / "digits.onnx"
    assert onnx_file.is_file() and onnx_file.stat().st_size > 1000


def test_difflut_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    heading = "## DiffLUT: lookup-table networks for FPGAs"
    blocks = _blocks(_section(README.read_text(), heading), "python")
    assert blocks, f"no ```python block under {heading!r} in README.md"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip().splitlines()[-1] == "True"
    assert (tmp_path / "digits_lut.onnx").stat().st_size > 1000


def test_quick_start_commands_are_verbatim() -> None:
    bash = [b.strip() for b in _blocks(_section(README.read_text(), "## Quick start"), "bash")]
    assert bash == [DEMO_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command_literally() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert TEST_COMMAND in lines


def test_the_complete_example_config_parses_with_every_key() -> None:
    """The README's example config shows every key of the schema and parses."""
    from dataclasses import fields

    from hwnas.cli.schema import (
        DataSection,
        ModelSection,
        OutputSection,
        SearchSection,
        parse_config,
    )

    text = _blocks(_section(README.read_text(), "## Command line"), "toml")[0]
    config = parse_config(text)
    assert config.search.targets == {"params": 0.5, "ops": 0.4}
    assert config.model.leaf_modules == ("MyAttention",)
    for section, cls in (("model", ModelSection), ("data", DataSection),
                         ("search", SearchSection), ("output", OutputSection)):
        table = text[text.index(f"[{section}]"):].split("\n\n")[0]
        keys = set(re.findall(r"^(\w+) =", table, flags=re.M))
        assert keys == {f.name for f in fields(cls)}, section
