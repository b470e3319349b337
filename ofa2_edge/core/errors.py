"""The toolkit's exception hierarchy and the CLI exit code each one maps to.

Every error a user can cause derives from :class:`Ofa2EdgeError`; its message says what
was wrong and how to fix it. The CLI turns them into stable exit codes, so scripts that
drive calibration on a fleet can react without parsing text.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_MEASUREMENT = 4


class Ofa2EdgeError(Exception):
    """Base class: a failure the user can understand and act on."""

    exit_code = EXIT_FAILURE


class InvalidInputError(Ofa2EdgeError, ValueError):
    """Bad user input: an arch outside the space, a malformed option or file.

    Exits 1 like any failed check; 2 is left to the usage errors Typer itself reports
    (an unknown option, a missing argument, a value of the wrong type).
    """

    exit_code = EXIT_FAILURE


class InvalidArchError(InvalidInputError):
    """An architecture the network or the search space cannot build."""


class LockedError(Ofa2EdgeError):
    """Another process is writing the same table or run folder."""


class SchemaError(Ofa2EdgeError):
    """A persisted file has an unknown schema version or does not match its schema."""


class CheckpointError(Ofa2EdgeError):
    """A supernet checkpoint is unreadable or does not match the network."""


class AssetError(Ofa2EdgeError):
    """An official asset (predictor, lookup table, checkpoint) is missing or corrupt."""


class ExportError(Ofa2EdgeError):
    """A subnet could not be exported, or the export failed its parity check."""


class DeviceUnreachableError(Ofa2EdgeError):
    """A device could not be reached, or refused our connection (e.g. host key)."""

    exit_code = EXIT_UNREACHABLE


class MeasurementError(Ofa2EdgeError):
    """A device was reached but a measurement could not be taken."""

    exit_code = EXIT_MEASUREMENT
