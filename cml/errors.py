"""Errors that reach the user as one line (no traceback unless --debug)."""

from __future__ import annotations


class CmlError(Exception):
    """An error the user can act on. ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.line())

    def line(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(self.fix)
        return " -- ".join(parts)


class InputError(CmlError):
    """Bad preset, image, model or option: nothing was run or written."""

    exit_code = 2


class ConfigErrors(InputError):
    """Several preset errors, reported together."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.what, self.where, self.fix = lines[0] if lines else "", None, None
        Exception.__init__(self, "\n".join(lines))

    def line(self) -> str:
        return "\n".join(self.lines)


class StageFailed(CmlError):
    """A stage's subprocess failed or its output did not pass the checks."""

    exit_code = 1
