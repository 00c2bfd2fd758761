"""The one exception type users see: its message is a single line that says what to do."""


class FesfError(Exception):
    """A problem with the user's input (config, data, hosts, device) that they can fix.

    The command-line entry points print ``error: <message>`` and exit with status 2
    instead of a traceback, so every message names the file or field at fault and
    says what to change.
    """


class ConfigError(FesfError):
    """A configuration file or value is invalid."""


class DataError(FesfError):
    """A data source, image file or host bank cannot be used."""
