"""The installed package's version, in a module that imports nothing of bsmamba2 (so any
module, and the command line's ``--version``, can read it without loading torch)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bsmamba2")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
