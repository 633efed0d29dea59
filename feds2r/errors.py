"""Errors a user can cause. The CLI prints their message (cause and fix) instead of a traceback."""

from __future__ import annotations


class Feds2rError(Exception):
    """Base class of every error feds2r reports to a user as one clear message."""


class DataError(Feds2rError):
    """A dataset tree or file is missing, malformed, or not what its format promises.

    ``kind`` names the defect (``missing_folder``, ``unpaired_image``, ``unpaired_label``,
    ``unreadable_image``, ``unreadable_label``, ``bad_label_value``, ``size_mismatch``,
    ``bad_spec``, ``empty``) and ``path`` the file or folder at fault, so that tools such as
    ``feds2r data check`` can report defects by kind.
    """

    def __init__(self, message: str, *, kind: str = "data", path: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path
