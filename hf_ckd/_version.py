"""The package version (a leaf: the package, the model cards and the lineage read it)."""

__version__ = "0.1.0"
