"""Readers: checkpoint files into ``TensorEntry`` records without reading tensor data, one module per format.

Below the stream engine: they import only ``core`` and ``errors`` (``tests/test_layers.py``).
"""
