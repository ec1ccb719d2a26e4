"""The error type for problems a user can fix; the CLI prints its message as one line."""


class BSMamba2Error(Exception):
    """Bad input, a missing file, an unusable checkpoint: reported without a traceback."""
