"""Readers turn checkpoint files into ``TensorEntry`` records without reading tensor data."""
