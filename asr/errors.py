"""Errors whose one-line message the CLI prints as it is (no traceback)."""


class AsrError(Exception):
    """Base class: the message names the file or key at fault and what to do."""


class ConfigError(AsrError):
    """A recipe or override is invalid."""


class AudioError(AsrError):
    """An audio file cannot be read or decoded."""


class DataError(AsrError):
    """A data file (manifest, corpus file, feature cache, checkpoint) is missing or malformed."""


class ExperimentError(AsrError):
    """An experiment folder cannot be used as asked (it holds another run; a write to it failed)."""
