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


class MissingExtraError(SlaoError):
    """A feature whose optional dependency is not installed; the message names the pip extra that adds it."""


def import_extra(module: str, extra: str, feature: str):
    """``import module`` for ``feature``, or a MissingExtraError that names ``pip install 'slao[extra]'``.

    Only the module itself (or a package it belongs to) being absent is turned into that message; an
    ImportError raised inside an installed module is a different problem and propagates unchanged.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        top = module.split(".")[0]
        if err.name is not None and err.name.split(".")[0] != top:
            raise
        raise MissingExtraError(f"{top} is not installed (needed for {feature}): pip install 'slao[{extra}]'") \
            from None
