"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input or options, with the fix in the message.

    The message is one sentence naming the problem and what to do, e.g.
    ``"input 'clip.mp4' does not exist: check the path"``. The CLI prints it without a traceback.
    """
