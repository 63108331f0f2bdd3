"""The one error type a user sees: a single line naming the file or value and what to do."""


class InstilError(Exception):
    """A problem with the user's input or environment, not a bug in instil.

    The command line prints its message as one line and exits non-zero, without a traceback,
    so every message must say what is wrong and what to do about it.
    """
