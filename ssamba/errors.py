"""Errors a user can fix: the command line prints them as one line (``ssamba <command>: error: ...``).

Every error type that means "your input, files or settings are wrong" derives from :class:`UserError`
(config errors, unreadable checkpoints, a locked run directory ...). They keep their usual built-in
base as well (``ValueError``, ``RuntimeError``), so code that catches those keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or settings; the message says what and where."""

    exit_code = 2
    """Process exit status when the command line stops on this error."""


class UnsafeCheckpointError(UserError, ValueError):
    """A checkpoint that could only be read by unpickling arbitrary Python objects (refused by default)."""


class RunLockedError(UserError, RuntimeError):
    """Another process is writing to the same run directory."""

    exit_code = 1
