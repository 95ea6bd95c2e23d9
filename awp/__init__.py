"""awp-landscape: training side (AT, AT-AWP)."""

__version__ = "0.1.0"
