"""Private helpers of hwnas (no public names): devices and precision, argument checks,
files, mode helpers. Nothing here is part of ``hwnas.__all__``; import from the module."""
