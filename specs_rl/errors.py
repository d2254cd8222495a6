"""User-facing errors: bad input that an entry point reports in one line with exit status 2."""


class SpecsError(ValueError):
    """Base of every error caused by the user's input (config, data file, parameter), not by a bug."""
