"""Nethical mesh shared library: stubs, summary math, kernels, clients."""

__version__ = "0.1.0"
