"""The one exception type users see: a one-line message naming the file and the fix."""


class WeakpasteError(Exception):
    """A user-facing error. ``str(err)`` is a single line suitable for the terminal."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by ``timeout``, SLURM and Kubernetes) as an interrupt: the command stops
    as for Ctrl-C, keeping what it wrote, and exits with 143."""


def reason(err: BaseException, max_len: int = 120) -> str:
    """One short line describing ``err``, for the parenthesis of a WeakpasteError.

    Library messages can run to paragraphs (torch's ``weights_only`` explanation): only the
    first line is kept and, when that is longer than ``max_len``, its first sentence.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = lines[0]
    if len(line) > max_len and ". " in line:
        line = line.split(". ", 1)[0]
    return line
