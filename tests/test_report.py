"""Tests for hwnas/cli/report.py: layer table, cost summary, CSV/Markdown/HTML report, figures."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

import hwnas
from hwnas.cli.report import check_png_not_blank, cost_summary, layer_table, report_files
from hwnas.search import materialize
from hwnas.zoo.models import digits_cnn

FIGURES = ("costs.png", "accuracy.png", "channels.png")
CHROMIUM = Path("/usr/bin/chromium")
TARGETS = {"params": 20000.0, "ops": 600000.0}


def _history() -> pd.DataFrame:
    phases = ["warmup"] * 2 + ["search"] * 4 + ["finetune"] * 2
    n = len(phases)
    return pd.DataFrame({
        "epoch": np.arange(1, n + 1),
        "phase": phases,
        "loss": np.linspace(2.0, 0.4, n),
        "cost_params": np.linspace(56234, 14298, n),
        "target_params": TARGETS["params"],
        "cost_ops": np.linspace(1788554, 451914, n),
        "target_ops": TARGETS["ops"],
        "train_accuracy": np.linspace(0.5, 0.95, n),
        "val_accuracy": np.linspace(0.45, 0.9, n),
    })


@pytest.fixture(scope="module")
def profiles() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Profiles of digits_cnn and of a real pruned copy (half of each free group kept)."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8)
    net = digits_cnn()
    search = hwnas.wrap(net, x)
    for g in search.free_groups:
        gate = search.gate(g)
        values = torch.ones(gate.n)
        values[: gate.n // 2] = 0.0
        gate.set_deterministic_(values)
    return hwnas.profile(net, x), hwnas.profile(materialize(search), x)


@pytest.fixture(scope="module")
def report(tmp_path_factory, profiles) -> dict[str, Path]:
    before, after = profiles
    folder = tmp_path_factory.mktemp("report") / "out"  # not yet existing: gets created
    return report_files(folder, _history(), before, after, title="digits <run>",
                        notes={"model": "digits_cnn", "seed": 0, "note": "a|b"})


def test_layer_table_columns_and_numbers(profiles) -> None:
    before, after = profiles
    table = layer_table(before, after)
    assert list(table.columns) == [
        "layer", "type", "out_channels_before", "out_channels_after", "kept_fraction",
        "params_before", "params_after", "ops_before", "ops_after", "frozen",
    ]
    assert table["layer"].tolist() == ["0", "1", "3", "4", "7", "8", "12", "total"]
    assert table["out_channels_before"].tolist()[:7] == [32, 32, 64, 64, 64, 64, 10]
    assert table["out_channels_after"].tolist()[:7] == [16, 16, 32, 32, 32, 32, 10]
    assert table["kept_fraction"].tolist()[:7] == [0.5] * 6 + [1.0]
    assert table["params_before"].tolist()[:7] == before["params"].tolist()[:7]
    assert table["params_after"].tolist()[:7] == after["params"].tolist()[:7]
    assert table["params_after"].iloc[2] == 32 * 16 * 9  # conv 3: 16 -> 32 channels, no bias
    assert table["frozen"].tolist()[6] == "model output"


def test_layer_table_total_is_the_sum(profiles) -> None:
    before, after = profiles
    table = layer_table(before, after)
    total, rows = table.iloc[-1], table.iloc[:-1]
    assert total["layer"] == "total"
    for col in ("params_before", "params_after", "ops_before", "ops_after"):
        assert total[col] == rows[col].sum()
    assert total["params_before"] == before["params"].iloc[-1] == 56234
    assert total["params_after"] == after["params"].iloc[-1] == 14298
    assert total["ops_after"] == after["ops"].iloc[-1]
    assert pd.isna(total["out_channels_before"]) and pd.isna(total["kept_fraction"])


def test_layer_table_luts_and_unmatched_layers() -> None:
    x = torch.randn(1, 4)
    big = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    small = torch.nn.Sequential(torch.nn.Linear(4, 4))
    table = layer_table(hwnas.profile(big, x, "xc7-lut6"), hwnas.profile(small, x, "xc7-lut6"))
    assert ["luts_before", "luts_after"] == [c for c in table.columns if c.startswith("luts")]
    assert table["layer"].tolist() == ["0", "2", "total"]
    assert pd.isna(table["params_after"].iloc[1])  # layer 2 is gone in `small`
    assert table["params_after"].iloc[-1] == 4 * 5
    assert table["luts_before"].iloc[-1] == pytest.approx(table["luts_before"].iloc[:-1].sum())


def test_layer_table_rejects_bad_input(profiles) -> None:
    before, _ = profiles
    with pytest.raises(TypeError, match="`after` must be a pandas DataFrame"):
        layer_table(before, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"misses \['params'\]"):
        layer_table(before.drop(columns=["params"]), before)


def test_cost_summary(profiles) -> None:
    before, after = profiles
    summary = cost_summary(before, after, {"params": 10000.0}, _history())
    rows = summary.set_index("cost")
    assert rows.loc["params", "before"] == 56234 and rows.loc["params", "after"] == 14298
    assert rows.loc["params", "target"] == 10000.0 and rows.loc["params", "met"] == "no"
    assert rows.loc["ops", "target"] == TARGETS["ops"] and rows.loc["ops", "met"] == "yes"
    with pytest.raises(TypeError, match=r"`targets\['ops'\]` must be a number"):
        cost_summary(before, after, {"ops": "small"})  # type: ignore[dict-item]


def test_all_files_written(report) -> None:
    names = {"history.csv", "layers.csv", "costs.csv", "report.md", "report.html", *FIGURES}
    assert set(report) == names
    for name, path in report.items():
        assert path.name == name and path.is_file() and path.stat().st_size > 0


def test_csv_round_trip(report, profiles) -> None:
    before, after = profiles
    layers = pd.read_csv(report["layers.csv"], dtype={"layer": str})
    table = layer_table(before, after)
    assert list(layers.columns) == list(table.columns)
    assert layers["layer"].tolist() == table["layer"].tolist()
    for col in table.columns[2:-1]:
        assert np.allclose(layers[col], table[col].astype("float64"), equal_nan=True), col
    by_layer = layers.set_index("layer")
    b, a = before.set_index("layer"), after.set_index("layer")
    for layer in ("0", "3", "7", "12"):
        assert by_layer.loc[layer, "params_before"] == b.loc[layer, "params"]
        assert by_layer.loc[layer, "params_after"] == a.loc[layer, "params"]
    assert by_layer.loc["total", "ops_after"] == 451914
    history = pd.read_csv(report["history.csv"])
    assert history["phase"].tolist() == _history()["phase"].tolist()
    assert np.allclose(history["cost_params"], _history()["cost_params"])


def test_markdown(report) -> None:
    md = report["report.md"].read_text()
    assert md.startswith("# digits <run>\n")
    for name in FIGURES:
        assert f"![{name[:-4]}]({name})" in md
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("|")}
    # one "before -> after" cell per cost (the table fits a page), thousands separated
    assert re.search(r"\|\s*Conv2d\s*\|\s*64 -> 32 \(50%\)\s*\|\s*18,432 -> 4,608\s*\|",
                     rows["3"])
    assert re.search(r"\|\s*56,234 -> 14,298\s*\|", rows["total"])
    assert re.search(r"\|\s*params\s*\|\s*56,234\s*\|\s*14,298\s*\|\s*20,000\s*\|\s*yes\s*\|",
                     rows["params"])
    assert r"a\|b" in md  # a pipe in a note does not break the table


def test_html_is_self_contained(report) -> None:
    page = report["report.html"].read_text()
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(sources) == len(FIGURES)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert page.count("data:image/png;base64,") == len(FIGURES)
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # no external references
    assert "<link" not in page and "<script" not in page
    assert "digits &lt;run&gt;" in page and "<run>" not in page
    assert "<td>18,432 -&gt; 4,608</td>" in page


def test_figures_not_blank(report) -> None:
    for name in FIGURES:
        check_png_not_blank(report[name])
        assert matplotlib.image.imread(report[name]).shape[0] > 100


def test_check_png_not_blank_raises(tmp_path) -> None:
    white = tmp_path / "white.png"
    matplotlib.image.imsave(white, np.ones((40, 60, 3)))
    with pytest.raises(ValueError, match="is blank"):
        check_png_not_blank(white)
    clear = tmp_path / "clear.png"
    matplotlib.image.imsave(clear, np.zeros((40, 60, 4)))  # fully transparent
    with pytest.raises(ValueError, match="is blank"):
        check_png_not_blank(clear)
    dot = tmp_path / "dot.png"
    image = np.ones((40, 60, 3))
    image[10:20, 10:20] = 0.0
    matplotlib.image.imsave(dot, image)
    check_png_not_blank(dot)
    with pytest.raises(FileNotFoundError, match="no PNG"):
        check_png_not_blank(tmp_path / "missing.png")


def test_without_history(tmp_path, profiles) -> None:
    before, after = profiles
    files = report_files(tmp_path / "r", None, before, after, targets=TARGETS)
    assert set(files) == {"layers.csv", "costs.csv", "channels.png", "report.md", "report.html"}
    assert not (tmp_path / "r" / "costs.png").exists()
    md = files["report.md"].read_text()
    assert "![channels](channels.png)" in md and "costs.png" not in md
    assert files["report.html"].read_text().count("data:image/png;base64,") == 1
    summary = pd.read_csv(files["costs.csv"])
    assert summary["met"].tolist() == ["yes", "yes"]


def test_history_without_costs_or_accuracy(tmp_path, profiles) -> None:
    before, after = profiles
    history = pd.DataFrame({"epoch": [0, 1], "loss": [1.0, 0.5]})
    files = report_files(tmp_path, history, before, after)
    assert "costs.png" not in files and "accuracy.png" not in files
    assert "history.csv" in files and "channels.png" in files


def test_write_report_rejects_bad_history(tmp_path, profiles) -> None:
    before, after = profiles
    with pytest.raises(TypeError, match="`history` must be a pandas DataFrame or None"):
        report_files(tmp_path, {"epoch": [0]}, before, after)  # type: ignore[arg-type]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")
def test_html_renders_in_headless_chromium(report, tmp_path) -> None:
    shot = tmp_path / "shot.png"
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1200,2000", report["report.html"].resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    check_png_not_blank(shot)
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")
def test_html_fits_a_1280_pixel_window(report, tmp_path) -> None:
    """In a real browser the page is no wider than a 1280-pixel window (a wide table
    scrolls in its own box): a copy of the page writes its width into its title."""
    page = report["report.html"].read_text().replace(
        "</body>", "<script>document.title = 'width ' + "
                   "document.documentElement.scrollWidth;</script></body>")
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
        "--dump-dom", probe.resolve().as_uri(),
    ]
    dom = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout
    width = int(re.search(r"<title>width (\d+)</title>", dom)[1])
    assert 600 < width <= 1280
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
