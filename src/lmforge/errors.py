"""User-facing errors: each carries one line that names the problem and the fix.

The CLI prints ``lmforge: error: <message>`` for any :class:`LmforgeError` and exits with
code 2, without a traceback. Library callers catch them like any other exception.
"""


class LmforgeError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class CorpusError(LmforgeError):
    """A corpus cannot be found, downloaded, verified or read."""


class DownloadError(CorpusError):
    """A named corpus is not on this machine and cannot be downloaded (offline, or
    ``LMFORGE_OFFLINE`` is set)."""


class TokenizerError(LmforgeError):
    """A tokenizer cannot be trained, loaded, or used on some text."""


class ConfigError(LmforgeError):
    """An option or configuration value is invalid."""


class RunError(LmforgeError):
    """A run directory is missing, incomplete, or of an unknown format."""


class TrainingError(LmforgeError):
    """Training cannot continue (for example the loss became NaN)."""
