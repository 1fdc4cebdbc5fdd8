"""The project's errors, and the one place where they become an exit message.

The package raises; only a `main()` exits, through `run`. Each error says what is wrong and where (the file and
line, the key, the argument) and what to do about it, so that `run` can print it as one line with no traceback.
A bug raises anything else, and keeps its traceback."""
from __future__ import annotations

import sys


class ProjectError(Exception):
    """Something the user can fix from the message alone."""


class DataError(ProjectError, ValueError):
    """Input that cannot be parsed at all; the message names the file and line or item."""


class ParamsError(ProjectError, ValueError):
    """A param that is missing, unknown, or has a value this run cannot use; the message names the key."""


class MissingOutput(ProjectError, FileNotFoundError):
    """An earlier stage's output is not there: the message says which stage to run (or to `dvc pull`)."""


class AdapterMismatch(ProjectError, ValueError):
    """An adapter sits on a different base than the one it was trained on."""


class SourceError(ProjectError, OSError):
    """The base model's source is missing or is not the pinned one."""


class DownloadError(ProjectError, OSError):
    """A download failed, broke a limit, or brought other bytes than the pinned ones."""


class ExportError(ProjectError, ValueError):
    """The model cannot be exported as asked, or not to the folder asked for."""


def run(main, name: str, *args) -> None:
    """Call `main(*args)`; a ProjectError ends the process with `<name> failed: <message>` and exit status 1. In a
    run of a study over several GPUs, the process first claims one of them (chattune.common.devices)."""
    from chattune.common.devices import claim_study_gpu

    claim_study_gpu()
    try:
        main(*args)
    except ProjectError as error:
        sys.exit(f"{name} failed: {error}")
