"""Tests for hwnas/cli/main.py (and hwnas/cli/runs.py through it): every command, the one-line
errors with exit code 2, unmet targets with exit code 1, resumes, and the console script."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import hwnas._internal.files
from hwnas.cli import main
from hwnas.cli.report import check_png_not_blank

SUBCOMMANDS = ("demo", "search", "profile", "export", "targets")
DIGITS_PARAMS = 56234
DIGITS_OPS = 1788554
TINY_CONFIG = """
[model]
factory = "hwnas.zoo.models:digits_cnn"
input_shape = [1, 1, 8, 8]

[data]
factory = "hwnas.zoo.datasets:digits"
kwargs = {batch_size = 256}

[search]
targets = {params = 0.6, ops = 0.6}
warmup_epochs = 1
search_epochs = 1
finetune_epochs = 1
patience = 1

[output]
folder = "out"
"""
OUTPUTS = ("checkpoint.pt", "search.pt", "model.onnx", "report.md", "report.html",
           "layers.csv", "history.csv", "costs.png")
ROW = re.compile(r"^\| (\w+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| (yes|NO) \|$", re.M)
NAN_DATA = """
import torch
from torch.utils.data import DataLoader, TensorDataset

def build():
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    x[5, 0, 3, 3] = float("nan")
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    return loader, loader, loader
"""
MODELS = """
from torch import nn

def broken():
    raise RuntimeError("no GPU here")

def not_a_module(**kwargs):
    return 3

def linear():  # nothing prunable: its input and output channels are frozen
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
"""


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _run_main(args: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(args)
    return rc, stdout.getvalue(), stderr.getvalue()


def _one_line_error(err: str, command: str) -> str:
    """The error printed by main: exactly one line, no traceback."""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"hwnas {command}: error: ") and "Traceback" not in err, err
    return err.strip()


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny `hwnas search` run shared by the tests that read its outputs."""
    folder = tmp_path_factory.mktemp("search")
    config = folder / "tiny.toml"
    config.write_text(TINY_CONFIG)
    (folder / "out").mkdir()
    stale = [folder / "out" / ".search.pt.a1b2c3.part", folder / "out" / ".model.onnx.x.part"]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    rc, out, err = _run_main(["search", str(config), "--no-progress"])
    return {"rc": rc, "out": folder / "out", "folder": folder, "stdout": out, "stderr": err,
            "stale": stale}


@pytest.fixture()
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder in which no file can be created (also when the tests run as root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> Any:
        if Path(kwargs.get("dir") or ".").resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(hwnas._internal.files.tempfile, "mkstemp", mkstemp)
    yield folder
    folder.chmod(0o755)


# ----------------------------------------------------------------------------- commands
def test_targets_lists_the_shipped_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert {"generic", "xc7-lut6", "ice40-lut4"} <= set(names)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hwnas {hwnas.__version__}"


def test_profile_prints_a_table_and_writes_csv(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "profile.csv"
    rc = main(["profile", "hwnas.zoo.models:digits_cnn", "--input-shape", "1,1,8,8",
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
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


@pytest.mark.parametrize("shape", ["1,x,8,8", "1,0,8,8", ""])
def test_profile_bad_input_shape_is_an_argparse_error(
        shape: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["profile", "hwnas.zoo.models:digits_cnn", "--input-shape", shape])
    assert info.value.code == 2
    assert "--input-shape" in capsys.readouterr().err


def test_search_writes_every_output(searched: dict[str, Any]) -> None:
    assert searched["rc"] == 0, searched["stderr"]
    out = searched["out"]
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~_umask(), name
    check_png_not_blank(out / "costs.png")
    assert "costs.png" in (out / "report.md").read_text()
    assert not any(path.exists() for path in searched["stale"])
    assert not list(out.glob("*.part")) and not list(out.glob(".*.part"))


def test_search_report_states_the_splits_and_the_test_accuracy(searched: dict[str, Any]) -> None:
    report = (searched["out"] / "report.md").read_text()
    assert re.search(r"\| split sizes \(train / validation / test\) +\| 1,293 / 144 / 360 +\|",
                     report), report
    assert re.search(r"\| early stopping +\| on the validation split \(warm-up and fine-tune\), "
                     r"patience 1 +\|", report)
    assert re.search(r"\| test split +\| untouched: only reported, never chosen on +\|", report)
    match = re.search(r"\| test accuracy, unpruned \(after warm-up\) -> exported +\| "
                      r"(0\.\d{4}) -> (0\.\d{4}) \(([+-]0\.\d{4})\) +\|", report)
    assert match and 0.5 < float(match[2]) <= 1.0
    assert float(match[3]) == pytest.approx(float(match[2]) - float(match[1]), abs=1e-4)
    printed = re.search(r"test accuracy of the exported model: (0\.\d{4}); unpruned after "
                        r"warm-up (0\.\d{4}) \(untouched test split, 360 examples\)",
                        searched["stdout"])
    assert printed and (printed[1], printed[2]) == (match[2], match[1])
    assert "validation accuracy: " in searched["stdout"]
    assert "examples, used for early stopping)" in searched["stdout"]
    assert re.search(r"\| targets met +\| yes +\|", report)


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
        err = _one_line_error(capsys.readouterr().err, "export")
        assert (f"{str(path)!r} is not a search result written by `hwnas search`" in err
                or f"{str(path)!r} is not a readable torch file (not a torch.save archive)"
                in err), err
    assert not onnx_path.exists()


def test_export_of_a_nan_model_is_an_export_error(searched: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    state = torch.load(searched["out"] / "search.pt", weights_only=False)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    onnx_path = tmp_path / "nan.onnx"
    assert main(["export", str(bad), "--onnx", str(onnx_path)]) == 2
    err = _one_line_error(capsys.readouterr().err, "export")
    assert "the PyTorch output is not finite" in err
    assert not onnx_path.exists() and not list(tmp_path.glob(".*.part"))


def test_export_into_missing_or_read_only_folder(searched: dict[str, Any], tmp_path: Path,
                                                 read_only: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    result = str(searched["out"] / "search.pt")
    missing = tmp_path / "nope" / "m.onnx"
    assert main(["export", result, "--onnx", str(missing)]) == 2
    err = _one_line_error(capsys.readouterr().err, "export")
    assert f"--onnx {str(missing)!r}: folder {str(missing.parent)!r} does not exist" in err
    assert main(["export", result, "--onnx", str(read_only / "m.onnx")]) == 2
    err = _one_line_error(capsys.readouterr().err, "export")
    assert f"folder of --onnx {str(read_only)!r} is not writable: Permission denied" in err


def test_export_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.pt"
    assert main(["export", str(path), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert f"search result {str(path)!r} does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------ one-line errors
def test_search_missing_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "missing.toml"]) == 2
    err = _one_line_error(capsys.readouterr().err, "search")
    assert "'missing.toml' does not exist" in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--debug", "search", "missing.toml"], ["search", "missing.toml", "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):")
        assert "hwnas.errors.MissingFileError" in err
        assert err.strip().splitlines()[-1].startswith("hwnas search: error: config file")


def test_search_bad_config_names_the_key(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    for old, new, message in [
        ("patience = 1", "patient = 0", "unknown key(s) ['patient'] in [search]"),
        ("patience = 1", "patience = true", "[search] `patience` must be an integer >= 0"),
        ("patience = 1", "seed = 1.5", "[search] `seed` must be an integer, but got 1.5"),
        ("patience = 1", "weight_decay = inf",
         "[search] `weight_decay` must be a finite number >= 0, but got inf"),
    ]:
        config.write_text(TINY_CONFIG.replace(old, new))
        assert main(["search", str(config)]) == 2
        err = _one_line_error(capsys.readouterr().err, "search")
        assert f"{config}: {message}" in err, err
    assert not (tmp_path / "out").exists()


def test_demo_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--out", str(afile), "--no-progress"]) == 2
    err = _one_line_error(capsys.readouterr().err, "demo")
    assert f"output folder {str(afile)!r} is a file, not a folder" in err


def test_read_only_output_folder_is_found_before_training(
        tmp_path: Path, read_only: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import hwnas.cli.runs

    monkeypatch.setattr(hwnas.cli.runs, "fit", lambda *a, **k: pytest.fail("trained"))
    config = tmp_path / "ro.toml"
    config.write_text(TINY_CONFIG.replace('folder = "out"', f'folder = "{read_only}"'))
    assert main(["search", str(config), "--no-progress"]) == 2
    err = _one_line_error(capsys.readouterr().err, "search")
    assert f"output folder {str(read_only)!r} is not writable: Permission denied" in err


@pytest.mark.parametrize(("section", "spec", "message"), [
    ("model", "models.py:broken",
     "[model] factory 'models.py:broken' raised RuntimeError: no GPU here"),
    ("model", "models.py:not_a_module",
     "[model] factory 'models.py:not_a_module' must return an nn.Module, but returned int"),
    ("model", "nope.py:build", "[model] factory: factory file '{folder}/nope.py' does not exist"),
    ("data", "models.py:not_a_module", "[data] factory 'models.py:not_a_module' must return an "
                                       "object with .train, .val (optional) and .test loaders"),
])
def test_search_factory_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               section: str, spec: str, message: str) -> None:
    (tmp_path / "models.py").write_text(MODELS)
    config = tmp_path / "f.toml"
    old = {"model": "hwnas.zoo.models:digits_cnn", "data": "hwnas.zoo.datasets:digits"}[section]
    config.write_text(TINY_CONFIG.replace(old, spec))
    assert main(["search", str(config), "--no-progress"]) == 2
    err = _one_line_error(capsys.readouterr().err, "search")
    assert message.format(folder=tmp_path) in err, err


def test_profile_factory_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "models.py").write_text(MODELS)
    for name, message in (("not_a_module", "must return an nn.Module, but returned int"),
                          ("broken", "raised RuntimeError: no GPU here")):
        spec = f"{tmp_path / 'models.py'}:{name}"
        assert main(["profile", spec, "--input-shape", "1,1,8,8"]) == 2
        err = _one_line_error(capsys.readouterr().err, "profile")
        assert f"factory {spec!r} {message}" in err


def test_profile_input_shape_mismatch_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "hwnas.zoo.models:digits_cnn", "--input-shape", "1,3,8,8"]) == 2
    err = _one_line_error(capsys.readouterr().err, "profile")
    assert "Check that example_inputs have the shape the model expects" in err
    assert len(err) < 600


def test_profile_unknown_or_bad_target(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    args = ["profile", "hwnas.zoo.models:digits_cnn", "--input-shape", "1,1,8,8", "--target"]
    assert main([*args, "no-such-fpga"]) == 2
    err = _one_line_error(capsys.readouterr().err, "profile")
    assert "unknown target 'no-such-fpga'; known: " in err
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "x\nfamily = "lut"\n')
    assert main([*args, str(broken)]) == 2
    err = _one_line_error(capsys.readouterr().err, "profile")
    assert f"target file {str(broken)!r} is not valid TOML: " in err
    nan = tmp_path / "nan.toml"
    nan.write_text('name = "x"\nfamily = "lut"\nlut_inputs = 6\n[luts]\nluts_per_pp_bit = nan\n')
    assert main([*args, str(nan)]) == 2
    err = _one_line_error(capsys.readouterr().err, "profile")
    assert f"{nan}: `luts.luts_per_pp_bit` must be a number >= 0, but got nan" in err


def test_profile_csv_into_missing_or_read_only_folder(
        tmp_path: Path, read_only: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["profile", "hwnas.zoo.models:digits_cnn", "--input-shape", "1,1,8,8", "--csv"]
    missing = tmp_path / "nope" / "p.csv"
    assert main([*args, str(missing)]) == 2
    err = _one_line_error(capsys.readouterr().err, "profile")
    assert f"--csv {str(missing)!r}: folder {str(missing.parent)!r} does not exist" in err
    assert main([*args, str(read_only / "p.csv")]) == 2
    err = _one_line_error(capsys.readouterr().err, "profile")
    assert f"folder of --csv {str(read_only)!r} is not writable" in err


# ------------------------------------------------------------- training failures, targets
def test_nan_data_writes_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "nan_data.py").write_text(NAN_DATA)
    config = folder / "nan.toml"
    config.write_text(TINY_CONFIG.replace('"hwnas.zoo.datasets:digits"', '"nan_data.py:build"')
                      .replace("kwargs = {batch_size = 256}\n", ""))
    monkeypatch.chdir(tmp_path)  # factories resolve against the config's folder
    assert main(["search", "exp/nan.toml", "--no-progress"]) == 2
    err = _one_line_error(capsys.readouterr().err, "search")
    assert ("training stopped in the warmup phase, epoch 1 of 3 (warmup epoch 1 of 1), step 1: "
            "the loss is nan; check the training data for NaN or infinite values") in err
    assert err.endswith("no model was exported")
    assert sorted(p.name for p in (folder / "out").iterdir()) == []


def test_divergence_writes_no_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lr.toml"
    config.write_text(TINY_CONFIG.replace("patience = 1", "lr = 1e6"))
    assert main(["search", str(config), "--no-progress"]) == 2
    err = _one_line_error(capsys.readouterr().err, "search")
    assert "the training diverged: the loss is" in err and "lower the learning rate" in err
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert not (tmp_path / "out" / "search.pt").exists()


def test_unmet_targets_exit_1_unless_allowed(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "models.py").write_text(MODELS)
    config = tmp_path / "lin.toml"
    config.write_text(TINY_CONFIG.replace("hwnas.zoo.models:digits_cnn", "models.py:linear")
                      .replace("patience = 1", "patience = 0"))
    assert main(["search", str(config), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert re.search(r"^\| params \| 650 \| 390 \| 650 \| NO \|$", captured.out, re.M)
    assert captured.err.strip() == ("hwnas: cost target(s) not met: params, ops; the outputs "
                                    "are written, see the report (--allow-unmet exits 0)")
    report = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"\| targets met +\| NO: params 650 > 390, ops 650 > 390 +\|", report)
    assert main(["search", str(config), "--no-progress", "--allow-unmet"]) == 0
    assert "note: cost target(s) not met: params, ops (--allow-unmet)" in capsys.readouterr().out


def test_search_resumes_its_checkpoint_and_fresh_starts_over(
        searched: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    folder = searched["folder"]
    changed = folder / "changed.toml"
    # same output folder, other settings: resuming the old checkpoint is refused ...
    for old, new, message in [
        ("search_epochs = 1", "search_epochs = 2",
         "fit settings differ (search_epochs: 1 in the checkpoint, 2 now)"),
        ("params = 0.6", "params = 0.5", "cost targets differ (params: 33,740.4 in the "
                                         "checkpoint, 28,117 now)"),
        ("batch_size = 256", "batch_size = 128", "train data differ (batches: 6 in the "
                                                 "checkpoint, 11 now)"),
    ]:
        changed.write_text(TINY_CONFIG.replace(old, new))
        assert main(["search", str(changed), "--no-progress"]) == 2
        err = _one_line_error(capsys.readouterr().err, "search")
        assert "was made by another run: " in err and message in err, err
        assert err.endswith("start over with --fresh (hwnas search) or remove the file")
    assert (searched["out"] / "checkpoint.pt").exists()  # ... and the checkpoint is kept
    # the same config resumes (here: at its last epoch) and says so
    assert main(["search", str(folder / "tiny.toml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("resumed from epoch 3 of 3 (") == 1  # said once
    # --fresh starts over
    changed.write_text(TINY_CONFIG.replace("search_epochs = 1", "search_epochs = 2"))
    assert main(["search", str(changed), "--no-progress", "--fresh"]) == 0
    assert "resumed from" not in capsys.readouterr().out
    history = pd.read_csv(searched["out"] / "history.csv")
    assert list(history["phase"]) == ["warmup", "search", "search", "finetune"]


# --------------------------------------------------------------------- the console script
def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)


def _console_script() -> list[str]:
    """The `hwnas` script of this interpreter's environment (a venv need not be on PATH)."""
    folder = Path(sys.executable).parent
    for name in ("hwnas", "hwnas.exe"):
        if (folder / name).is_file():
            return [str(folder / name)]
    found = shutil.which("hwnas")  # e.g. pip install --user
    assert found is not None, f"no `hwnas` console script next to {sys.executable} or on PATH"
    return [found]


def test_console_script_help() -> None:
    proc = _run([*_console_script(), "--help"])
    assert proc.returncode == 0, proc.stderr
    for command in SUBCOMMANDS:
        assert re.search(rf"^\s+{command}\s", proc.stdout, flags=re.M), command


def test_console_script_found_without_path() -> None:
    env = dict(os.environ, PATH="/nonexistent")
    proc = subprocess.run([*_console_script(), "--version"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == f"hwnas {hwnas.__version__}"


def test_python_dash_m_targets() -> None:
    proc = _run([sys.executable, "-m", "hwnas", "targets"])
    assert proc.returncode == 0, proc.stderr
    assert {"generic", "xc7-lut6", "ice40-lut4"} <= {
        line.split()[0] for line in proc.stdout.splitlines() if line.strip()}


def test_python_dash_m_error_is_one_line(tmp_path: Path) -> None:
    proc = _run([sys.executable, "-m", "hwnas", "search", str(tmp_path / "none.toml")])
    assert proc.returncode == 2
    assert proc.stderr == (f"hwnas search: error: config file {str(tmp_path / 'none.toml')!r} "
                           "does not exist\n")


# ------------------------------------------------------------------------- device, precision
def test_search_says_which_device_and_precision(searched: dict[str, Any]) -> None:
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"  # [search] device = "auto"
    assert f"training on {expected}" in searched["stdout"]
    assert "precision fp32" in searched["stdout"]


def test_search_device_and_precision_from_toml_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(TINY_CONFIG.replace("patience = 1", 'patience = 1\ndevice = "cpu"\n'
                                          'precision = "bf16"').replace(
        "search_epochs = 1", "search_epochs = 1\nenforce_targets = true"))
    (tmp_path / "out").mkdir()
    rc, out, err = _run_main(["search", str(config), "--no-progress"])
    assert rc == 0, err
    assert "training on cpu, precision bf16" in out
    rows = {m[0]: m[1:] for m in ROW.findall(out)}
    assert rows["params"][3] == "yes"
    rc, out, err = _run_main(["search", str(config), "--no-progress", "--fresh",
                              "--amp", "fp32"])
    assert rc == 0, err
    assert "training on cpu, precision fp32" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_search_on_a_missing_gpu_is_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(TINY_CONFIG)
    (tmp_path / "out").mkdir()
    rc, _, err = _run_main(["search", str(config), "--device", "cuda"])
    assert rc == 2
    assert _one_line_error(err, "search") == (
        "hwnas search: error: `device` 'cuda' is not available: this machine has no CUDA "
        "device (torch.cuda.is_available() is False); use 'cpu' or 'auto'")
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_bad_device_in_toml_or_flag_names_it(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(TINY_CONFIG.replace("patience = 1", 'patience = 1\ndevice = "gpu"'))
    rc, _, err = _run_main(["search", str(config)])
    assert rc == 2
    assert "[search] `device` must be 'auto', 'cpu', 'cuda' or 'cuda:N', but got 'gpu'" in err
    config.write_text(TINY_CONFIG)
    rc, _, err = _run_main(["search", str(config), "--device", "tpu:x"])
    assert rc == 2
    assert _one_line_error(err, "search").endswith(
        "--device: `device` must be 'auto', 'cpu', 'cuda' or 'cuda:N', but got 'tpu:x'")
    with pytest.raises(SystemExit):
        _run_main(["search", str(config), "--amp", "fp8"])


# ------------------------------------------------------------------ first hour (issue 23)
def test_load_and_export_torch_turn_a_search_back_into_pytorch(
        searched: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hwnas

    search_pt = searched["out"] / "search.pt"
    model = hwnas.load(search_pt)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x)
    costs = pd.read_csv(searched["out"] / "costs.csv").set_index("cost")
    assert hwnas.profile(model, x[:1]).iloc[-1]["params"] == costs.loc["params", "after"]
    program = tmp_path / "m.pt2"
    assert main(["export", str(search_pt), "--torch", str(program)]) == 0
    out = capsys.readouterr().out
    assert f"rebuilding the pruned model from {search_pt} ...\n  done in " in out
    assert f"wrote {program}: torch.export program" in out
    loaded = hwnas.load(program)
    with torch.no_grad():
        assert float((loaded(x) - expected).abs().max()) < 1e-5
    model.train()  # a plain fx.GraphModule: it trains like any model
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert main(["export", str(search_pt)]) == 2
    assert "needs --onnx PATH and/or --torch PATH" in capsys.readouterr().err


def test_a_search_result_that_would_run_code_is_refused(
        searched: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hwnas
    from hwnas.errors import UntrustedFileError

    state = torch.load(searched["out"] / "search.pt", weights_only=True)
    planted = tmp_path / "pwned"
    state["config"]["output"]["folder"] = _Planted(planted)
    bad = tmp_path / "search.pt"
    torch.save(state, bad)
    with pytest.raises(UntrustedFileError, match="holds more than tensors and plain data"):
        hwnas.load(bad)
    assert main(["export", str(bad), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "(trust=True, or --trust on the command line)" in capsys.readouterr().err
    assert not planted.exists()


class _Planted:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def test_no_progress_keeps_one_line_per_epoch_and_step(searched: dict[str, Any]) -> None:
    out = searched["stdout"]
    assert re.findall(r"^\[(\w+)\] epoch (\d)/3 ", out, re.M) == [
        ("warmup", "1"), ("search", "2"), ("finetune", "3")]
    assert re.search(r"exporting and verifying .*model.onnx .*\.\.\.\n  done in \d+\.\d s", out)
    assert re.search(r"writing the report to .* \.\.\.\n  done in \d+\.\d s", out)


@pytest.mark.parametrize(("targets", "message"), [
    ("{params = 50}", r"target fraction for 'params' must be in \(0, 1\] \(a fraction of the "
                      r"original cost\), but got 50; for 50% write 0.5"),
    ("{params = 1.5}", r"must be in \(0, 1\] .*, but got 1.5"),
])
def test_a_toml_target_that_is_not_a_fraction_is_refused(tmp_path: Path, targets: str,
                                                         message: str) -> None:
    from hwnas.cli.schema import parse_config
    from hwnas.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config(TINY_CONFIG.replace("{params = 0.6, ops = 0.6}", targets))


def test_export_onnx_removes_what_a_killed_export_left(tmp_path: Path) -> None:
    import hwnas

    stale = tmp_path / ".m.onnx.k1ll3d.part"
    stale.write_bytes(b"half an onnx file")
    other = tmp_path / ".other.onnx.k1ll3d.part"
    other.write_bytes(b"someone else's")
    hwnas.export_onnx(torch.nn.Linear(3, 2), tmp_path / "m.onnx", torch.randn(1, 3))
    assert not stale.exists() and other.exists()


def test_help_version_and_argparse_errors_do_not_import_torch() -> None:
    """`hwnas --help`, `--version` and a mistyped command answer at once: building the
    parser imports neither torch nor the package's layers (importing torch alone takes
    seconds on a cold machine)."""
    code = ("import sys, contextlib, io\n"
            "from hwnas.cli.main import main\n"
            "for argv in (['--help'], ['--version'], ['serach'], ['demo', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), "
            "contextlib.redirect_stderr(io.StringIO()):\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
