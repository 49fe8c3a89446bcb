"""``hwnas demo --precision``: the digits search with bit widths searched too, end to end.

The digits CNN on ``xc7-lut6``, a ``[precision]`` table (weights and activations in
{2, 3, 4, 6, 8} bits per layer, power-of-two scales) and a LUT target of 10% of the model
at uniform 8 bits; the usual report, and beside it the QONNX and QDQ files of the searched
model (both verified), its bits per layer (``bits.csv``, ``bits.md``) and yosys on its last
layer at its bits beside the estimates (in ``bits.md``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from hwnas.errors import InvalidValueError

__all__ = ["DEMO_LUT_FRACTION", "demo_precision", "precision_config"]

#: The demo's LUT target, a fraction of the digits CNN's LUTs at uniform 8 bits.
DEMO_LUT_FRACTION = 0.1


def precision_config(out: str | None = None, quick: bool = False) -> Any:
    """The demo's config: the digits demo with a ``[precision]`` table and a LUT target."""
    from hwnas.cli.runs import demo_config
    from hwnas.search.bitspace import PrecisionSpace

    config = demo_config(out=out or "reports/demo-precision", quick=quick)
    search = replace(config.search, targets={"luts": DEMO_LUT_FRACTION})
    return replace(config, search=search, precision=PrecisionSpace(scale="pow2"))


def precision_space(config: Any) -> Any:
    """The config's [precision] table (the demo's has one)."""
    if config.precision is None:
        raise InvalidValueError("the precision demo needs a [precision] table")
    return config.precision


def demo_precision(args: argparse.Namespace) -> Any:
    """Run the demo; print the bits per layer, the exports' checks and yosys's count.
    Returns the :class:`~hwnas.cli.runs.RunSummary` (the caller prints the costs)."""
    from hwnas._internal.files import atomic_write
    from hwnas.cli.console import step
    from hwnas.cli.quantized import synth_lines
    from hwnas.cli.runs import run_search, with_overrides

    config = with_overrides(precision_config(args.out, args.quick), args.device, args.amp)
    space = precision_space(config)
    print(f"hwnas demo --precision: digits CNN, bits {space.weight_bits} (weights) and "
          f"{space.activation_bits} (activations) per layer and the channels, DUCCIO to "
          f"{DEMO_LUT_FRACTION:.0%} of the 8-bit model's LUTs on {config.search.target}")
    summary = run_search(config, progress=not args.no_progress, resume=False)
    quantized = summary.quantized
    if quantized:
        bits_md = quantized["paths"]["bits.md"]
        with step(f"synthesizing the last searched layer with yosys ({config.search.target})"):
            lines = synth_lines(quantized["model"], config.hardware_target)
        with atomic_write(bits_md) as tmp:
            tmp.write_text(bits_md.read_text() + "\n".join(lines) + "\n")
        print("\nbits per layer (weights / activations):")
        print(quantized["table"].to_string(index=False))
        for note in quantized["notes"]:
            print(f"  {note}")
        print("\n".join(lines[4:]))
        print(f"bits per layer, exports and yosys: {bits_md}")
    return summary
