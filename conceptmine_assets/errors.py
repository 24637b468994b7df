"""Error types with messages that name the file or scene at fault."""


class ConceptmineError(Exception):
    """Base class for errors raised by conceptmine on bad input or configuration."""


class DatasetError(ConceptmineError):
    """The nuScenes dataroot, one of its tables, a scene or a sample file is missing or malformed."""


class ModelLoadError(ConceptmineError):
    """A model's weights or configuration could not be loaded."""


class SchemaError(ConceptmineError):
    """A stage produced a table that does not match its declared schema."""


class StoreWriteError(ConceptmineError):
    """A stored file could not be written (full disk, read-only store, no permission); the
    message names the file and the reason, e.g. ``No space left on device (ENOSPC)``."""


class IntegrityError(ConceptmineError):
    """A stored file does not match the record written with it (missing, truncated, altered)."""
