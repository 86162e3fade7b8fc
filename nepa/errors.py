"""Torch-free base of every error a user can fix; the CLI prints these as one line."""


class NepaError(Exception):
    """A problem with the user's input or files: the message says what, where and the fix."""
