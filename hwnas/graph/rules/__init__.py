"""Channel rules: one small function per op family, found in two registries.

- :mod:`~hwnas.graph.rules.base`: the two rule tables, :func:`register_channel_rule` and
  the helpers rules share;
- :mod:`~hwnas.graph.rules.layers`: layers, elementwise ops and the dispatch
  (:func:`rule_for`);
- :mod:`~hwnas.graph.rules.shape`: reshapes, permutes, indexing, concatenation, splits;
- :mod:`~hwnas.graph.rules.ops`: functional layers (linear, conv, matmul, einsum) and
  functional normalisations; :mod:`~hwnas.graph.rules.attention`: attention.

Importing this package registers every built-in rule.
"""

from hwnas.graph.rules import (  # noqa: F401  (they register rules)
    attention,
    functions,
    ops,
    shape,
)
from hwnas.graph.rules.base import register_channel_rule
from hwnas.graph.rules.layers import rule_for

__all__ = ["register_channel_rule", "rule_for"]
