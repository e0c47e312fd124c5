"""One exception root; every user-facing error renders as one located line (`SpecErrors`: one per error)."""

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


class SpecErrors(SpecError):
    """Several located errors found together (every disagreement of a spec with a checkpoint
    folder): rendered one line each, in order; the first one is this error's own location."""

    def __init__(self, errors: list[SpecgrowError]):
        first = errors[0]
        super().__init__(first.message, path=first.path, line=first.line, column=first.column)
        self.errors = list(errors)

    def render(self) -> str:
        return "\n".join(error.render() for error in self.errors)


def each_error(error: SpecgrowError) -> list[SpecgrowError]:
    """The one-line errors ``error`` holds: its `SpecErrors.errors`, or itself."""
    return list(getattr(error, "errors", [error]))


class InputError(SpecgrowError):
    """A file could not be read or written, or the command line is wrong (exit 2)."""

    exit_code = 2


class CheckpointError(SpecgrowError):
    """The checkpoint does not match the spec or is unreadable (exit 1)."""


class NumericCheckError(SpecgrowError):
    """The grown model's logits differ from the original's beyond tolerance (exit 1)."""


class UnprovedError(SpecgrowError):
    """The spec is not PROVED, so ``apply`` refuses it (exit 1)."""
