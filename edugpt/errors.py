"""The project's error type: a user's mistake or an unusable input, reported as one sentence without a traceback."""


class EduGPTError(Exception):
    """Raised for anything the user can fix. The message names what is wrong and what to do about it.

    Entry points run their `main` under `edugpt.config.cli.run`, which prints `error: <message>` to stderr and exits with
    status 2; any other exception is a bug and keeps its traceback.
    """
