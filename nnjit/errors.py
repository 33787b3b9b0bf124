"""One exception hierarchy, rooted at NnjitError.

Each NNPACK status that can arise from a Python call has its own class (its numeric code is
kept as ``status`` for reference). Value problems subclass ValueError, type and dtype problems
subclass TypeError, so callers may catch either the nnjit class or the builtin one.
"""


class NnjitError(Exception):
    """Base of every error nnjit raises on purpose."""

    status: int | None = None


class InvalidArgument(NnjitError, ValueError):
    """An argument's value breaks a rule of the operation."""


class InvalidType(NnjitError, TypeError):
    """An argument has the wrong type or dtype (nothing is ever silently cast)."""


class InvalidBatchSize(InvalidArgument):
    status = 2


class InvalidChannels(InvalidArgument):
    status = 3


class InvalidInputChannels(InvalidArgument):
    status = 4


class InvalidOutputChannels(InvalidArgument):
    status = 5


class InvalidInputSize(InvalidArgument):
    status = 10


class InvalidInputPadding(InvalidArgument):
    status = 12


class InvalidKernelSize(InvalidArgument):
    status = 13


class InvalidOutputSubsampling(InvalidArgument):
    """A convolution stride is zero or negative (NNPACK's output subsampling)."""

    status = 13


class InvalidPoolingSize(InvalidArgument):
    status = 14


class InvalidActivation(InvalidArgument):
    status = 14


class InvalidPoolingStride(InvalidArgument):
    status = 15


class InvalidActivationParameters(InvalidArgument):
    status = 15


class InvalidAlgorithm(InvalidArgument):
    status = 16


class InvalidTransformStrategy(InvalidArgument):
    status = 17


class InvalidShape(InvalidArgument):
    """Wrong rank, or shapes of several arguments that do not fit together."""


class InvalidOutput(InvalidArgument):
    """An ``out`` array of the wrong shape, layout or writability."""


class InvalidIsaLevel(InvalidArgument):
    """An ISA level name that is not in the level table."""


class UnsupportedAlgorithm(InvalidArgument):
    status = 26


class UnsupportedTransformStrategy(InvalidArgument):
    status = 27


class UnsupportedActivation(InvalidArgument):
    status = 28
