"""The package version: one place that every module (and pyproject.toml) reads it from."""

__version__ = "0.1.0"
