"""Exception types. Every error a user can cause says which file, line or key, and why."""


class EarshotError(Exception):
    """Base class for errors caused by input (files, configs, text), not by bugs."""


class AudioError(EarshotError):
    """An audio file cannot be used: missing, unreadable, empty or non-finite."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(EarshotError):
    """A configuration value or key is wrong; the message names the key."""


class ManifestError(EarshotError):
    """A manifest (CSV/JSONL/CutSet) is malformed; the message names file and line."""


class TokenizerError(EarshotError):
    """Text cannot be tokenized, or a tokenizer directory is invalid."""


class TrainingError(EarshotError):
    """Training cannot go on (diverged, or another rank stopped answering); says what to try."""
