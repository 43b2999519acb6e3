"""One line for a command line that tyro rejects, like every other user error of recon4d.

tyro reports a bad option in a boxed panel of ten lines or more (the argument's whole help
text included). recon4d's contract is one line naming the problem and the fix, exit code 2;
``one_line_option_errors`` turns tyro's parse-failure events into that line. The hook API is
tyro's private ``tyro._errors`` (tyro 1.0): with a tyro that lacks it, or for an event kind
this module does not know, tyro's own panel is printed instead (still exit code 2), so an
upgrade can only make the message longer, never lose it.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

_TYPE_WORDS = {"INT": "an integer", "FLOAT": "a number", "PATH": "a path", "STR": "a text",
               "BOOL": "True or False"}


class OptionError(Exception):
    """A rejected command line; ``str()`` is the one-line message."""


def _flag(argument) -> str:
    """``--steps`` for an option, ``PATH`` for a positional argument."""
    lowered = argument.lowered
    if argument.is_positional():
        return str(lowered.metavar or lowered.name_or_flags[0])
    return "/".join(lowered.name_or_flags)


def _expected(argument) -> str:
    """What the argument takes, in words: ``{None}|INT`` -> 'an integer'."""
    metavar = str(argument.lowered.metavar or "")
    kinds = [k for k in metavar.split("|") if k and k != "{None}"]
    words = [f"one of {', '.join(k[1:-1].split(','))}" if k.startswith("{") and k.endswith("}")
             else _TYPE_WORDS.get(k, k) for k in kinds]
    return " or ".join(words) if words else "a value"


def _given_value(message: str) -> str | None:
    """The rejected token(s) out of tyro's "... could be instantiated from ['abc']."."""
    found = re.search(r"from \[(.*?)\]", message)
    return found.group(1) if found else None


def describe(event) -> str | None:
    """The one-line message for a tyro ParseErrorEvent, or None to leave it to tyro."""
    from tyro import _errors as te

    help_hint = f"run '{event.prog} --help' for the options"
    if isinstance(event, te.MissingArgs):
        names = ", ".join(("argument " if a.arg.is_positional() else "option ") + _flag(a.arg)
                          for a in event.missing_arguments)
        extra = (f"; unrecognized {' '.join(repr(t) for t in event.unrecognized_tokens)}"
                 if event.unrecognized_tokens else "")
        return f"missing {names}{extra}: {help_hint}"
    if isinstance(event, te.UnrecognizedArgs):
        tokens = " ".join(repr(t) for t in event.tokens)
        plural = "s" if len(event.tokens) > 1 else ""
        what = "option" if all(t.startswith("-") for t in event.tokens) else "argument"
        return f"unrecognized {what}{plural} {tokens}: {help_hint}"
    if isinstance(event, te.InvalidChoice):
        choices = ", ".join(sorted(c for c in event.choices if c != "None"))
        return f"{_flag(event.argument)} must be one of {choices}, got {event.value!r}"
    if isinstance(event, te.BadValue):
        if event.reason == "fixed" and event.offending_value is not None:
            return f"{_flag(event.argument)} takes no value, got {event.offending_value!r}: {help_hint}"
        if event.argument.is_positional():
            return f"missing argument {_flag(event.argument)}: {help_hint}"
        return f"{_flag(event.argument)} needs {_expected(event.argument)}: {help_hint}"
    if isinstance(event, te.InstantiationFailure):
        first_line = event.message.strip().splitlines()[0] if event.message.strip() else "bad value"
        if event.argument is None:
            return f"{first_line}: {help_hint}"
        given = _given_value(event.message)
        if given is None:
            return f"{_flag(event.argument)}: {first_line}"
        return f"{_flag(event.argument)} takes {_expected(event.argument)}, got {given}"
    if isinstance(event, te.MutexConflict):
        return f"{event.first_token} and {event.second_token} cannot be given together"
    return None


def _raise_one_line(event) -> None:
    message = describe(event)
    if message is not None:
        raise OptionError(message)


@contextlib.contextmanager
def one_line_option_errors() -> Iterator[None]:
    """Inside the block, tyro.cli raises OptionError(one line) instead of printing its panel."""
    try:
        from tyro._errors import on_parse_error
    except ImportError:  # a tyro without the hook: its own panel, exit code 2
        yield
        return
    with on_parse_error(_raise_one_line):
        yield
