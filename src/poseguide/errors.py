"""The base class of errors meant for people: the CLI prints them as one line (exit status 2)."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing model, diverged run...); the message
    names the file, row, key or step and says what to do."""
