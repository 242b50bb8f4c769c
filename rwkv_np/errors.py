"""The exceptions rwkv_np raises on bad input.

Every error a user can provoke (a bad checkpoint, a bad argument, a token out of range) is one of
these, with a message that names the file or argument and says what is wrong.
"""


class RWKVError(Exception):
    """Base class of every error rwkv_np raises on purpose."""


class CheckpointError(RWKVError, ValueError):
    """A checkpoint file or folder cannot be loaded: the message names it and says why."""


class ArgumentError(RWKVError, ValueError):
    """An argument (token ids, a sampling option, a state) is invalid: the message names it."""


class DownloadError(RWKVError, RuntimeError):
    """A model could not be downloaded or found in the local cache."""


class ModelError(RWKVError, ArithmeticError):
    """The model's weights produce values float32 cannot hold (inf or NaN): the message names the
    checkpoint and the first layer or token where it happened."""


class TrainingError(RWKVError, RuntimeError):
    """Training cannot go on (the loss or the weights stopped being finite): the message names the step."""
