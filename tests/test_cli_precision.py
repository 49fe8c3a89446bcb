"""Tests for the command line's precision search: the [precision] table of
hwnas/cli/schema.py, hwnas/cli/quantized.py (the QONNX / QDQ / bits outputs) and
hwnas/cli/precision_demo.py (``hwnas demo --precision``)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

import hwnas
from hwnas.cli.main import build_parser
from hwnas.cli.precision_demo import precision_config
from hwnas.cli.schema import DEMO_CONFIG, SearchConfig, parse_config
from hwnas.errors import ConfigError


def test_precision_table_is_parsed_checked_and_kept():
    config = parse_config(DEMO_CONFIG + '\n[precision]\nweight_bits = [2, 4, 8]\n'
                          'scale = "pow2"\nper_channel = true\n')
    assert config.precision == hwnas.PrecisionSpace(weight_bits=(2, 4, 8), scale="pow2",
                                                    per_channel=True)
    assert SearchConfig.from_dict(config.to_dict()).precision == config.precision
    assert parse_config(DEMO_CONFIG).precision is None
    assert config.resume_key() != parse_config(DEMO_CONFIG).resume_key()
    with pytest.raises(ConfigError, match=r"\[precision\] `weight_bits` must not contain 0"):
        parse_config(DEMO_CONFIG + "\n[precision]\nweight_bits = [0, 4]\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bits'\] in \[precision\]"):
        parse_config(DEMO_CONFIG + "\n[precision]\nbits = [4]\n")
    with pytest.raises(ConfigError, match="`scale` must be one of"):
        parse_config(DEMO_CONFIG + '\n[precision]\nscale = "fp8"\n')


def test_demo_precision_flag_and_config():
    args = build_parser().parse_args(["demo", "--precision", "--quick", "--out", "x"])
    assert args.precision and args.quick and args.out == "x" and args.amp is None
    config = precision_config("x", quick=True)
    assert config.search.targets == {"luts": 0.1} and config.search.target == "xc7-lut6"
    assert config.precision.scale == "pow2" and config.output.folder == "x"


@pytest.mark.slow
def test_search_with_precision_writes_verified_quantised_exports(tmp_path):
    from hwnas.cli.runs import load, run_search

    config = precision_config(str(tmp_path / "out"), quick=True)
    config = replace(config, search=replace(config.search, warmup_epochs=1, search_epochs=1,
                                            finetune_epochs=1, patience=0))
    summary = run_search(config, progress=False, resume=False)
    out = tmp_path / "out"
    for name in ("model.qonnx.onnx", "model.qdq.onnx", "bits.csv", "bits.md", "report.md"):
        assert (out / name).is_file(), name
    assert all(r.bit_exact for r in summary.quantized["exports"])  # power-of-two scales
    bits = pd.read_csv(out / "bits.csv")
    assert bits["layer"].astype(str).tolist() == ["0", "3", "7", "12"]
    assert set(bits["activation_bits"]) <= {2, 3, 4, 6, 8}
    layers = pd.read_csv(out / "layers.csv")
    assert "weight_bits" in layers.columns
    assert "bits (w/a)" in (out / "report.md").read_text()
    rebuilt = load(out / "search.pt")
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), summary.quantized["model"].eval()(x))
