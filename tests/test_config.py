"""Tests for hwnas/cli/schema.py: TOML schema validation, loading, factories, output folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hwnas import wrap
from hwnas.cli.schema import (
    DEMO_CONFIG,
    FIT_KEYS,
    SearchConfig,
    SearchSection,
    load_config,
    load_factory,
    parse_config,
)
from hwnas.errors import ConfigError, HwnasError, MissingFileError
from hwnas.training.config import EarlyStopping, FitConfig

MINIMAL = """
[model]
factory = "hwnas.zoo.models:digits_cnn"
input_shape = [1, 1, 8, 8]

[data]
factory = "hwnas.zoo.datasets:digits"

[search]
targets = {params = 0.5}
"""


def test_demo_config_parses() -> None:
    cfg = parse_config(DEMO_CONFIG)
    assert isinstance(cfg, SearchConfig)
    assert cfg.model.factory == "hwnas.zoo.models:digits_cnn"
    assert cfg.model.input_shape == (1, 1, 8, 8)
    assert cfg.data.kwargs == {"batch_size": 64, "val_size": 0.1}
    assert cfg.search.target == "xc7-lut6"
    assert cfg.search.targets == {"params": 0.5, "ops": 0.5}
    assert (cfg.search.warmup_epochs, cfg.search.search_epochs,
            cfg.search.finetune_epochs, cfg.search.patience) == (10, 20, 10, 3)
    assert cfg.output_dir == Path("reports/demo")


def test_defaults_of_a_minimal_config() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.search.target == "generic"
    assert cfg.search.cost_mode == "straight_through"
    assert cfg.search.lr == pytest.approx(1e-3)
    assert cfg.model.leaf_modules == ()
    assert cfg.output.folder == "runs/search"
    assert cfg.to_dict()["model"]["input_shape"] == (1, 1, 8, 8)


def test_search_defaults_are_fit_configs_and_wraps_own() -> None:
    # one source of defaults (issue 11, item 9): a minimal [search] gives FitConfig()
    cfg = parse_config(MINIMAL)
    built = cfg.search.fit_config()
    assert built == FitConfig()
    for key in FIT_KEYS:
        assert getattr(cfg.search, key) == getattr(FitConfig(), key), key
    assert (cfg.search.warmup_epochs, cfg.search.search_epochs,
            cfg.search.finetune_epochs) == (5, 20, 5)
    assert cfg.search.patience == 0 and built.early_stopping is None
    import inspect

    defaults = inspect.signature(wrap).parameters
    assert cfg.search.droprate_init == defaults["droprate_init"].default
    assert cfg.search.channel_multiple == defaults["channel_multiple"].default
    assert cfg.search.target == defaults["target"].default
    # every FitConfig setting that changes the result can be set from a config file
    runtime = {"early_stopping", "device", "progress", "stop_after", "on_epoch_end"}
    assert set(FIT_KEYS) == {f for f in FitConfig.__dataclass_fields__} - runtime


def test_fit_config_follows_the_given_keys() -> None:
    text = MINIMAL.replace("[search]\n", "[search]\nsearch_epochs = 3\npatience = 2\n"
                                         "lr = 0.01\n")
    built = parse_config(text).search.fit_config(progress=False)
    assert built == FitConfig(search_epochs=3, lr=0.01, progress=False,
                              early_stopping=EarlyStopping(patience=2))


@pytest.mark.parametrize(("line", "message"), [
    ("seed = 1.5", r"\[search\] `seed` must be an integer, but got 1.5"),
    ("patience = true", r"\[search\] `patience` must be an integer >= 0 \(0: no early "
                        r"stopping\), but got True"),
    ("weight_decay = inf", r"\[search\] `weight_decay` must be a finite number >= 0, but got inf"),
    ("lr = \"fast\"", r"\[search\] `lr` must be a number, but got 'fast'"),
    ("warmup_epochs = 2.5", r"\[search\] `warmup_epochs` must be an integer >= 0, but got 2.5"),
    ("cost_mode = \"cheap\"", r"\[search\] `cost_mode` must be 'expected' or"),
    ("droprate_init = 1.0", r"\[search\] `droprate_init` must be a number in \(0, 1\)"),
    ("channel_multiple = 0", r"\[search\] `channel_multiple` must be an integer >= 1"),
    ("enforce_targets = 1", r"\[search\] `enforce_targets` must be True or False, but got 1"),
])
def test_bad_search_values_name_their_key(line: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL.replace("[search]\n", f"[search]\n{line}\n"))
    with pytest.raises(ConfigError, match=rf"bad\.toml: {message}"):
        load_config(path)


def test_search_section_directly() -> None:
    with pytest.raises(ConfigError, match=r"target fraction for 'params' must be in \(0, 1\] "
                                          r"\(a fraction of the original cost\), but got nan"):
        SearchSection(targets={"params": float("nan")})


def test_unknown_key_is_named_with_allowed_keys() -> None:
    text = MINIMAL.replace("[search]\n", "[search]\nwarmup = 3\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['warmup'\] in \[search\]") as info:
        parse_config(text)
    allowed = str(info.value).split("allowed: ")[1].split(", ")
    assert {"warmup_epochs", "search_epochs", "finetune_epochs", "targets"} <= set(allowed)
    assert "warmup" not in allowed


def test_unknown_table() -> None:
    with pytest.raises(ValueError,
                       match=r"unknown table\(s\) \['trainer'\]; allowed: data, model, output"):
        parse_config(MINIMAL + "\n[trainer]\nepochs = 3\n")


def test_missing_model_table() -> None:
    text = MINIMAL.replace('[model]\nfactory = "hwnas.zoo.models:digits_cnn"\n'
                           "input_shape = [1, 1, 8, 8]\n", "")
    assert "[model]" not in text
    with pytest.raises(ValueError, match=r"the config needs a \[model\] table"):
        parse_config(text)


def test_missing_required_key_is_named() -> None:
    text = MINIMAL.replace('factory = "hwnas.zoo.models:digits_cnn"\n', "")
    with pytest.raises(ValueError, match=r"\[model\] is missing required key\(s\) \['factory'\]"):
        parse_config(text)


@pytest.mark.parametrize("shape", ["[]", "[1, 0, 8, 8]", "[1, -1]", '"1,1,8,8"', "[1.5, 8]"])
def test_bad_input_shape(shape: str) -> None:
    text = MINIMAL.replace("input_shape = [1, 1, 8, 8]", f"input_shape = {shape}")
    with pytest.raises(ValueError, match=r"\[model\] `input_shape` must be a list of positive"):
        parse_config(text)


@pytest.mark.parametrize("fraction", ["0", "-0.5", '"half"', "inf", "true", "1.5"])
def test_bad_target_fraction(fraction: str) -> None:
    text = MINIMAL.replace("targets = {params = 0.5}", f"targets = {{params = {fraction}}}")
    with pytest.raises(ValueError, match=r"target fraction for 'params' must be in \(0, 1\] "
                                         r"\(a fraction of the original cost\), but got"):
        parse_config(text)


def test_a_percentage_as_target_fraction_gets_the_fraction_to_write() -> None:
    text = MINIMAL.replace("targets = {params = 0.5}", "targets = {params = 50}")
    with pytest.raises(ValueError, match=r"but got 50; for 50% write 0\.5$"):
        parse_config(text)


def test_empty_targets() -> None:
    text = MINIMAL.replace("targets = {params = 0.5}", "targets = {}")
    with pytest.raises(ValueError, match=r"\[search\] `targets` must be a table like"):
        parse_config(text)


def test_bad_toml_syntax() -> None:
    with pytest.raises(ValueError, match=r"the config is not valid TOML: .*line 2"):
        parse_config('[model]\nfactory = "a:b\ninput_shape = [1, 1]\n')


@pytest.mark.parametrize(("line", "message"), [
    ("leaf_modules = 3",
     r"\[model\] `leaf_modules` must be a list of class names or module paths, but got 3"),
    ("kwargs = 3", r"\[model\] `kwargs` must be a table, but got 3"),
])
def test_bad_model_values_are_named(line: str, message: str) -> None:
    text = MINIMAL.replace("input_shape = [1, 1, 8, 8]\n", f"input_shape = [1, 1, 8, 8]\n{line}\n")
    with pytest.raises(ValueError, match=message):
        parse_config(text)


def test_bad_output_folder() -> None:
    with pytest.raises(ValueError, match=r"\[output\] `folder` must be a non-empty string, but "
                                         r"got 3"):
        parse_config(MINIMAL + "\n[output]\nfolder = 3\n")


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(MissingFileError, match=r"config file '.*nope\.toml' does not exist"):
        load_config(path)


def test_load_config_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL.replace("[search]\n", "[search]\nepochs = 3\n"))
    with pytest.raises(ValueError, match=r"bad\.toml: unknown key\(s\) \['epochs'\]"):
        load_config(path)


def test_output_folder_is_relative_to_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "experiments" / "a"
    sub.mkdir(parents=True)
    (sub / "search.toml").write_text(MINIMAL + '\n[output]\nfolder = "out"\n')
    assert load_config(sub / "search.toml").output_dir == sub / "out"
    absolute = tmp_path / "elsewhere"
    (sub / "abs.toml").write_text(MINIMAL + f'\n[output]\nfolder = "{absolute.as_posix()}"\n')
    assert load_config(sub / "abs.toml").output_dir == absolute


def test_load_factory_module() -> None:
    fn = load_factory("hwnas.zoo.models:digits_cnn")
    model = fn()
    assert sum(p.numel() for p in model.parameters()) == 56234 + 320


@pytest.mark.parametrize(("spec", "message"), [
    ("nocolon", r"a factory must be 'module:function', but got 'nocolon'"),
    ("a:b:c", r"a factory must be 'module:function', but got 'a:b:c'"),
    ("hwnas_no_such_module:fn", r"cannot import module 'hwnas_no_such_module' of factory"),
    ("hwnas.zoo.models:no_such_model",
     r"module 'hwnas.zoo.models' has no attribute 'no_such_model'"),
])
def test_load_factory_errors(spec: str, message: str) -> None:
    with pytest.raises(HwnasError, match=message):
        load_factory(spec)


def test_load_factory_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"factory file '.*missing\.py' does not exist"):
        load_factory(f"{tmp_path / 'missing.py'}:build")


def test_load_factory_from_file(tmp_path: Path) -> None:
    (tmp_path / "helper_layers.py").write_text("WIDTH = 7\n")
    (tmp_path / "my_model.py").write_text(
        "from torch import nn\n"
        "from helper_layers import WIDTH\n\n"
        "def build(classes=3):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(4, WIDTH), nn.Linear(WIDTH, classes))\n"
    )
    build = load_factory(f"{tmp_path / 'my_model.py'}:build")
    model = build(classes=5)
    assert tuple(model(torch.ones(2, 1, 2, 2)).shape) == (2, 5)
    assert model[1].out_features == 7
    with pytest.raises(ValueError, match=r"has no attribute 'nope'"):
        load_factory(f"{tmp_path / 'my_model.py'}:nope")


def test_factory_files_resolve_against_the_config_folder(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "net.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Linear(64, 10)\n")
    (folder / "fpga.toml").write_text('name = "mine"\n')
    (folder / "s.toml").write_text(
        MINIMAL.replace("hwnas.zoo.models:digits_cnn", "net.py:build")
        + 'target = "fpga.toml"\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder
    cfg = load_config("experiment/s.toml")
    assert cfg.factory("model")().out_features == 10
    assert cfg.hardware_target == Path("experiment") / "fpga.toml"
    with pytest.raises(ConfigError, match=r"\[model\] factory: factory file "
                                          r"'experiment/nope.py' does not exist"):
        SearchConfig(cfg.model.__class__("nope.py:build", (1, 64)), cfg.data, cfg.search,
                     cfg.output, cfg.base_dir).factory("model")


def test_factory_file_that_fails_to_import(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import no_such_module_hwnas\n")
    with pytest.raises(HwnasError, match=r"importing factory file '.*broken\.py' failed: "
                                         r"ModuleNotFoundError"):
        load_factory(f"{tmp_path / 'broken.py'}:build")


def test_to_dict_round_trip(tmp_path: Path) -> None:
    cfg = parse_config(DEMO_CONFIG, base_dir=tmp_path)
    again = SearchConfig.from_dict(cfg.to_dict())
    assert again == SearchConfig(cfg.model, cfg.data, cfg.search, cfg.output, tmp_path.resolve())
    assert again.resume_key() == cfg.resume_key()


LEAF_MODELS = """
from torch import nn

class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return self.conv(x).relu()

def net():
    return nn.Sequential(Block(1, 8), Block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))
"""


def test_leaf_modules_take_class_names_and_module_paths(tmp_path: Path) -> None:
    """`[model] leaf_modules` is documented as class names: a class name keeps every module
    of that class opaque (it was silently ignored when read as a module path); module paths
    work too."""
    from hwnas.cli.runs import build_model, build_search

    (tmp_path / "models.py").write_text(LEAF_MODELS)
    text = MINIMAL.replace('"hwnas.zoo.models:digits_cnn"', '"models.py:net"')

    def leaves(entries: str) -> set[str]:
        config = parse_config(text.replace("input_shape = [1, 1, 8, 8]",
                                           f"input_shape = [1, 1, 8, 8]\nleaf_modules = {entries}"),
                              base_dir=tmp_path)
        search, _ = build_search(config, build_model(config))
        return {str(n.target) for n in search.gm.graph.nodes if n.op == "call_module"}

    assert {"0", "1"} <= leaves('["Block"]')
    assert "0" not in leaves("[]") and "0.conv" in leaves("[]")
    assert "1" in leaves('["1"]') and "0" not in leaves('["1"]')
    config = parse_config(text.replace("input_shape = [1, 1, 8, 8]",
                                       'input_shape = [1, 1, 8, 8]\nleaf_modules = ["block"]'),
                          base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"\[model\] leaf_modules: 'block' is neither the "
                                          r"class of a module of the model nor a module path; "
                                          r"classes: .*Block"):
        build_search(config, build_model(config))
