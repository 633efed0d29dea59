"""The version of feds2r, in a module of its own that imports nothing, so that any layer can
read it without importing the package's public API."""

__version__ = "0.1.0"
