"""Error types whose message is a complete one-line explanation for the user (the CLI prints it as is)."""


class LGRNetError(Exception):
    """Base class: a user-facing error that names the file, record or argument at fault."""


class DataError(LGRNetError):
    """A dataset file, record or image is missing, unreadable, unsafe or malformed."""


class CheckpointError(LGRNetError):
    """A checkpoint is missing, incomplete or does not fit the model."""
