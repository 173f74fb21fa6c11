"""Errors that are the user's to fix.

Every command catches :class:`UserError` at its entry point, prints one line
``<prog>: error: <message>`` on stderr and exits with status 2 (CONTRACT.md).
Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in input a user controls: a file, a flag, a config key."""

    exit_code = 2


class AudioError(UserError):
    """An audio file that cannot be used; the message names the file."""


class DataError(UserError):
    """A data set that does not follow the DCASE layout."""


class BundleError(UserError):
    """A deployment bundle that fails its checks."""


class ConfigError(UserError):
    """A daemon configuration that fails validation."""


class ManifestError(BundleError):
    """A bundle manifest with a key missing or of the wrong kind; the message names the key's path."""
