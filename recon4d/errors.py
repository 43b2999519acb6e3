"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

import errno

WRITE_REFUSED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
"""OSError codes that mean "this place cannot be written" (permissions, a read-only mount): the
fix is another folder or its permissions, not another try."""


class UserError(Exception):
    """A problem with the user's input or options, with the fix in the message.

    The message is one sentence naming the problem and what to do, e.g.
    ``"input 'clip.mp4' does not exist: check the path"``. The CLI prints it without a traceback.
    """


class Interrupted(KeyboardInterrupt):
    """A command stopped by Ctrl+C or SIGTERM, with what to do next in the message.

    The CLI prints ``recon4d: interrupted: MESSAGE`` and exits with ``exit_code`` (130 for
    SIGINT, 143 for SIGTERM, as shells report a process those signals ended).
    """

    def __init__(self, message: str = "", exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code
