"""One exception root; every user-facing error renders as one located line."""

from __future__ import annotations


class SpecgrowError(Exception):
    """Root of every error specgrow reports to a user (no traceback reaches them)."""

    exit_code = 1

    def __init__(self, message: str, *, path: str = "<spec>", line: int = 1, column: int = 1):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.column = column

    def render(self) -> str:
        """``FILE:LINE:COL: error: MESSAGE`` on one line."""
        text = " ".join(self.message.split())
        return f"{self.path}:{self.line}:{self.column}: error: {text}"


class SpecError(SpecgrowError):
    """The spec is malformed or not applicable (exit 1)."""


class InputError(SpecgrowError):
    """A file could not be read or written, or the command line is wrong (exit 2)."""

    exit_code = 2


class CheckpointError(SpecgrowError):
    """The checkpoint does not match the spec or is unreadable (exit 1)."""


class NumericCheckError(SpecgrowError):
    """The grown model's logits differ from the original's beyond tolerance (exit 1)."""


class UnprovedError(SpecgrowError):
    """The spec is not PROVED, so ``apply`` refuses it (exit 1)."""
