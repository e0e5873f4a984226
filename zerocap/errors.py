"""The one exception type for mistakes a user can make (a bad value, file, flag or setting)."""


class InputError(ValueError):
    """Something the user sent or set is wrong; the message says what, and what is allowed.

    The command line prints it as one line (exit 2) and the Cog runner fails that prediction
    with it; any other exception is a bug and keeps its traceback.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `docker stop`, a job scheduler's time limit), raised where Ctrl-C's
    KeyboardInterrupt would be, so that a command cleans up the same way (what it created and did
    not write to is removed) and then exits with 143."""
