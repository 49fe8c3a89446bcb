"""Exports of plain ``nn.Module`` s: verified ONNX (:mod:`~hwnas.export.onnx`).

A generic exporter knows nothing of the search: a :class:`~hwnas.SearchModel` is turned
into a plain model by its own ``export()`` first.
"""
