"""The ``bsmamba2`` command line."""
