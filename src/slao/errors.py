"""The one exception type that the command line turns into a clear message and an exit status."""


class SlaoError(Exception):
    """A problem the user can fix: bad input, a bad setting, a refused file.

    The CLI prints ``str(err)`` (no traceback) and exits with ``exit_status``.
    """

    exit_status = 2


class DataError(SlaoError):
    """A data file or task definition that cannot be used; the message names the file and record."""


class ConfigError(SlaoError):
    """A configuration value, flag or name that is not valid; the message lists what is."""
