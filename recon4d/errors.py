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
