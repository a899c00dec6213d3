"""Errors raised for bad user input. Each names the file, the key, what was expected and what was found."""

from __future__ import annotations


class VideoActionError(Exception):
    """Base class of every error this library raises for a user mistake (not a bug)."""


class StoreError(VideoActionError):
    """A dataset store that is missing, malformed, truncated or inconsistent."""

    def __init__(self, path, problem: str, key: str | None = None, expected=None, found=None):
        self.path, self.key, self.expected, self.found = str(path), key, expected, found
        parts = [f"{self.path}"]
        if key is not None:
            parts.append(f"key '{key}'")
        msg = ": ".join([" ".join(parts), problem])
        if expected is not None:
            msg += f" (expected {expected}"
            msg += f", found {found})" if found is not None else ")"
        elif found is not None:
            msg += f" (found {found})"
        super().__init__(msg)


class ConfigError(VideoActionError):
    """A config file or override that does not match the config's fields or types."""
