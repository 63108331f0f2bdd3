"""The error types a user sees: a single line naming the file or value and what to do."""


class InstilError(Exception):
    """A problem with the user's input or environment, not a bug in instil.

    The command line prints its message as one line and exits non-zero, without a traceback,
    so every message must say what is wrong and what to do about it.
    """


# The kinds of bad input the Python API tells apart, so that a pipeline can catch one of
# them; each is also a ValueError, what Python code expects of a bad argument.
class DataError(InstilError, ValueError):
    """Data that cannot be learnt from: empty, not (image tensor, int label), labels out of
    range, images of mixed shapes, unreadable files."""


class ModelError(InstilError, ValueError):
    """A model that does not fit the data: another output width than the classes, images it
    cannot take, weights of another architecture."""


class MethodError(InstilError, ValueError):
    """A method that cannot run here: unknown, needing old data, or given a budget or
    options it cannot work with."""
