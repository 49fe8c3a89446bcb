"""Training: :func:`hwnas.fit` and what it is made of.

- :mod:`~hwnas.training.config`: :class:`FitConfig`, :class:`EarlyStopping`;
- :mod:`~hwnas.training.fit`: :func:`fit`, :class:`FitResult`, :func:`relative_targets`;
- :mod:`~hwnas.training.run`: phases, the step guard and one run's state;
- :mod:`~hwnas.training.loop`: one epoch and one step;
- :mod:`~hwnas.training.checkpoint`: atomic checkpoints and the resume key;
- :mod:`~hwnas.training.evaluation`: evaluation and BatchNorm recalibration;
- :mod:`~hwnas.training.distributed`: torch.distributed helpers.

The package imports nothing eagerly: the config schema of the command line reads
:mod:`~hwnas.training.config` without loading the training loop. Users import the verbs
from :mod:`hwnas`.
"""
