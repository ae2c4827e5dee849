"""The ``nethical-mesh`` command line."""
