"""Errors that a user can act on.

Every failure caused by input (a missing file, a corrupt video, an invalid config, an
unreachable stream or database) is raised as an `AnprError` whose message is one line
that says what is wrong and with what. The CLI prints that line and exits non-zero;
anything else reaching the top is a bug and is reported as one.
"""


class AnprError(Exception):
    """Base class: the message is shown to the user as is."""

    exit_code = 2


class SourceError(AnprError):
    """A frame source cannot be opened or read."""


class ModelError(AnprError):
    """Model weights are missing, corrupt or unusable."""


class ConfigError(AnprError):
    """A configuration file or option is invalid."""


class StoreError(AnprError):
    """The database cannot be opened or written."""


class DatasetError(AnprError):
    """An annotated dataset folder is malformed."""


class ClusterError(AnprError):
    """A run on a cluster cannot start or go on (no Ray, no node, a node that cannot run)."""


class PolicyRefusal(AnprError):
    """The deployment's policy forbids what was asked (a run, a query)."""

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (of the driver's error, for a database one)."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
