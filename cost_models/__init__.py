"""Hardware target files shipped with hwnas (installed as ``hwnas.cost_models``).

The TOML files in this folder describe hardware targets; ``README.md`` documents the
schema and every formula. Edit a copy and load it by path with
``hwnas.cost.load_target("path/to/my_target.toml")``.
"""
