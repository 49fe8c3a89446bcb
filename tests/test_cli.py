"""Tests for hwnas/cli.py: targets, profile, search, export, errors, and the console script."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from hwnas.cli import main
from hwnas.report import check_png_not_blank

SUBCOMMANDS = ("demo", "search", "profile", "export", "targets")
DIGITS_PARAMS = 56234
DIGITS_OPS = 1788554
TINY_CONFIG = """
[model]
factory = "hwnas.models:digits_cnn"
input_shape = [1, 1, 8, 8]

[data]
factory = "hwnas.datasets:digits"
kwargs = {batch_size = 256}

[search]
targets = {params = 0.6, ops = 0.6}
warmup_epochs = 1
search_epochs = 1
finetune_epochs = 1
patience = 0

[output]
folder = "out"
"""
OUTPUTS = ("checkpoint.pt", "search.pt", "model.onnx", "report.md", "report.html",
           "layers.csv", "history.csv", "costs.png")
ROW = re.compile(r"^\| (\w+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| (yes|NO) \|$", re.M)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny `hwnas search` run shared by the tests that read its outputs."""
    folder = tmp_path_factory.mktemp("search")
    config = folder / "tiny.toml"
    config.write_text(TINY_CONFIG)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["search", str(config), "--no-progress"])
    return {"rc": rc, "out": folder / "out", "folder": folder, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue()}


def test_targets_lists_the_shipped_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert {"generic", "xc7-lut6", "ice40-lut4"} <= set(names)


def test_profile_prints_a_table_and_writes_csv(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "profile.csv"
    rc = main(["profile", "hwnas.models:digits_cnn", "--input-shape", "1,1,8,8",
               "--target", "xc7-lut6", "--csv", str(path)])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["layer", "type"]
    assert "luts" in lines[0].split()
    total_line = [line for line in lines if line.startswith("total")]
    assert len(total_line) == 1
    assert str(DIGITS_PARAMS) in total_line[0].split() and str(DIGITS_OPS) in total_line[0].split()
    df = pd.read_csv(path)
    total = df[df["layer"].astype(str) == "total"].iloc[0]
    assert int(total["params"]) == DIGITS_PARAMS
    assert int(total["ops"]) == DIGITS_OPS
    layers = df[df["layer"].astype(str) != "total"]
    assert int(layers["params"].sum()) == DIGITS_PARAMS
    assert list(layers["type"]).count("Conv2d") == 3
    assert float(total["luts"]) > 0


@pytest.mark.parametrize("shape", ["1,x,8,8", "1,0,8,8", ""])
def test_profile_bad_input_shape_is_an_argparse_error(
        shape: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["profile", "hwnas.models:digits_cnn", "--input-shape", shape])
    assert info.value.code == 2
    assert "--input-shape" in capsys.readouterr().err


def test_profile_unknown_target_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["profile", "hwnas.models:digits_cnn", "--input-shape", "1,1,8,8",
               "--target", "no-such-fpga"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("hwnas profile: error:") and "no-such-fpga" in err


def test_search_writes_every_output(searched: dict[str, Any]) -> None:
    assert searched["rc"] == 0, searched["stderr"]
    out = searched["out"]
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    check_png_not_blank(out / "costs.png")
    assert "costs.png" in (out / "report.md").read_text()


def test_search_history_has_all_phases(searched: dict[str, Any]) -> None:
    history = pd.read_csv(searched["out"] / "history.csv")
    assert list(history["phase"]) == ["warmup", "search", "finetune"]
    end_of_search = history[history["phase"] == "search"].iloc[-1]
    assert end_of_search["cost_params"] <= end_of_search["target_params"]
    assert end_of_search["cost_ops"] <= end_of_search["target_ops"]


def test_search_prints_targets_met(searched: dict[str, Any]) -> None:
    rows = {m[0]: m[1:] for m in ROW.findall(searched["stdout"])}
    assert set(rows) == {"params", "ops"}, searched["stdout"]
    for name, original in (("params", DIGITS_PARAMS), ("ops", DIGITS_OPS)):
        before, target, after, met = rows[name]
        assert _number(before) == original
        assert _number(target) == pytest.approx(0.6 * original, abs=1)
        assert _number(after) <= _number(target)
        assert met == "yes"
    assert "test accuracy of the exported model: " in searched["stdout"]
    assert str(searched["out"] / "report.html") in searched["stdout"]


def test_search_onnx_runs(searched: dict[str, Any]) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(searched["out"] / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (3, 10)


def test_export_rebuilds_the_search_result(searched: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = tmp_path / "again.onnx"
    assert main(["export", str(searched["out"] / "search.pt"), "--onnx", str(onnx_path)]) == 0
    assert onnx_path.is_file() and onnx_path.stat().st_size > 1000
    printed = capsys.readouterr().out
    exported_params = dict((m[0], m[3]) for m in ROW.findall(searched["stdout"]))["params"]
    assert f"params {exported_params}," in printed
    assert re.search(r"max \|ORT - torch\| \d\.\d\de-\d\d", printed)


def test_export_rejects_a_file_that_is_not_a_search_result(
        searched: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = tmp_path / "x.onnx"
    for path in (searched["out"] / "checkpoint.pt", searched["folder"] / "tiny.toml"):
        assert main(["export", str(path), "--onnx", str(onnx_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hwnas export: error:")
        assert f"{str(path)!r} is not a search result written by `hwnas search`" in err
    assert not onnx_path.exists()


def test_export_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.pt"
    assert main(["export", str(path), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert f"checkpoint {str(path)!r} does not exist" in capsys.readouterr().err


def test_search_missing_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "missing.toml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hwnas search: error:") and "'missing.toml' does not exist" in err


def test_search_bad_config_names_the_key(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(TINY_CONFIG.replace("patience = 0", "patient = 0"))
    assert main(["search", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['patient'] in [search]" in err
    assert not (tmp_path / "out").exists()


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)


def test_console_script_help() -> None:
    exe = shutil.which("hwnas")
    assert exe is not None, "the `hwnas` console script is not on PATH (pip install -e .)"
    proc = _run([exe, "--help"])
    assert proc.returncode == 0, proc.stderr
    for command in SUBCOMMANDS:
        assert re.search(rf"^\s+{command}\s", proc.stdout, flags=re.M), command


def test_python_dash_m_targets() -> None:
    proc = _run([sys.executable, "-m", "hwnas", "targets"])
    assert proc.returncode == 0, proc.stderr
    assert {"generic", "xc7-lut6", "ice40-lut4"} <= {
        line.split()[0] for line in proc.stdout.splitlines() if line.strip()}


def test_search_resumes_its_checkpoint_and_fresh_starts_over(
        searched: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    folder = searched["folder"]
    changed = folder / "changed.toml"
    changed.write_text(TINY_CONFIG.replace("search_epochs = 1", "search_epochs = 2"))
    # same output folder, other settings: resuming the old checkpoint is refused ...
    assert main(["search", str(changed), "--no-progress"]) == 2
    assert "different configuration" in capsys.readouterr().err
    assert (searched["out"] / "checkpoint.pt").exists()  # ... and the checkpoint is kept
    # --fresh starts over
    assert main(["search", str(changed), "--no-progress", "--fresh"]) == 0
    history = pd.read_csv(searched["out"] / "history.csv")
    assert list(history["phase"]) == ["warmup", "search", "search", "finetune"]
