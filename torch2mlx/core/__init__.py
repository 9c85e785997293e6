"""The lowest layer: dtypes and casts, the rule tables, tensor entry and rule-spec types, quantization formats.

Imports only numpy and ``torch2mlx.errors``; every other layer builds on it (see docs/architecture.md).
"""
