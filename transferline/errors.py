"""Errors a user can act on. Stage CLIs print their message and exit non-zero, without a traceback."""


class TransferlineError(Exception):
    """An expected failure with a message that says what is wrong and how to fix it."""


class ParamsError(TransferlineError):
    """params.yaml holds a value that is missing, of the wrong type or out of range."""


class DataError(TransferlineError):
    """The input data cannot produce a usable data set."""


class AssetError(TransferlineError):
    """A data set or weight file is missing and cannot be fetched."""
