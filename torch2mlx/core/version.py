"""The package version, here so that every layer can record it without importing the package facade."""

__version__ = "0.1.0"
