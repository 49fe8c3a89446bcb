"""Doctest collection: the Triton module is only imported where Triton is installed."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("triton") else ["triton_lut.py"]
