"""The one exception type users see: a one-line message naming the file and the fix."""


class WeakpasteError(Exception):
    """A user-facing error. ``str(err)`` is a single line suitable for the terminal."""
