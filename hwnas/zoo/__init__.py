"""Bundled datasets and demo models (not library code): :mod:`~hwnas.zoo.datasets`
(scikit-learn's digits, no download) and :mod:`~hwnas.zoo.models` (the digits CNN,
ResNet-8). The command line's configs name them as ``hwnas.zoo.models:digits_cnn``."""
