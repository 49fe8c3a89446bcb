"""The ``hwnas`` command line.

- :mod:`~hwnas.cli.main`: argparse and dispatch (the ``hwnas`` console script);
- :mod:`~hwnas.cli.schema`: the TOML schema of ``hwnas search``;
- :mod:`~hwnas.cli.runs`: the runs behind the commands (search, demo, profile, export);
- :mod:`~hwnas.cli.report` and :mod:`~hwnas.cli.figures`: the search report;
- :mod:`~hwnas.cli.hw`: ``hwnas synth`` and ``hwnas calibrate``; :mod:`~hwnas.cli.lut_demo`:
  ``hwnas demo --lut``.
"""

from hwnas.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
