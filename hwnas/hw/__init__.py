"""Hardware: Verilog of LUT networks, simulation parity, synthesis with yosys, calibration.

- :func:`export_verilog`: a LUT network as one Verilog module (:mod:`hwnas.hw.verilog`
  documents the port convention); :func:`lut_estimate`: the LUT estimate of what it builds.
- :func:`verify_verilog`: a real simulator (Icarus Verilog or Verilator) against
  :func:`hwnas.difflut.binary_inference_module`, bit for bit.
- :func:`synthesize`: yosys with the target's script; LUTs, carries, muxes and flip-flops
  read from yosys's own ``stat``; optional place and route with nextpnr-ice40.
- :func:`calibrate`: micro-benchmarks, fitted LUT costs, written into a target file
  (``hwnas calibrate TARGET``).

The tools come from PATH or from ``pip install "hwnas[fpga]"`` (:mod:`hwnas.hw.tools`).

Example:
    >>> import tempfile
    >>> from torch import nn
    >>> from hwnas.difflut import GroupSum, LUTLayer
    >>> model = nn.Sequential(LUTLayer(8, 6, k=3, seed=0), GroupSum(2))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     v = export_verilog(model, f"{d}/net.v")
    >>> v.top, v.output_width
    ('hwnas_lut_net', 4)
"""

from hwnas.hw.calibrate import calibrate
from hwnas.hw.simulate import SimulationResult, verify_verilog
from hwnas.hw.synth import PlaceRouteResult, SynthResult, synthesize
from hwnas.hw.verilog import InputQuantizer, Port, VerilogModule, export_verilog, lut_estimate

__all__ = [
    "InputQuantizer",
    "PlaceRouteResult",
    "Port",
    "SimulationResult",
    "SynthResult",
    "VerilogModule",
    "calibrate",
    "export_verilog",
    "lut_estimate",
    "synthesize",
    "verify_verilog",
]
