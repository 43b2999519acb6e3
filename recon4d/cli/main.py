"""Entry point of the ``recon4d`` console script.

The first word picks a subcommand; only that subcommand's module is imported, and tyro parses
the rest into its ``Config`` dataclass. Global flags, accepted anywhere on the line:
``--quiet`` (no progress output) and ``--debug`` (tracebacks for user errors).
User errors (:class:`recon4d.errors.UserError`, and options tyro rejects) print one line and exit with code 2; errors of
the machine (OSError: a full disk, no permission) print one line and exit with code 1.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import os
import signal
import sys
import traceback

SUBCOMMANDS: dict[str, str] = {
    "demo": "Run the whole pipeline on the built-in default scene (ingest, fit, export, eval).",
    "ingest": "Turn a video, GIF, frame folder or transforms.json into a dataset directory.",
    "fit": "Fit dynamic Gaussian surfels to a video or dataset; writes a run directory.",
    "export": "Export a fitted run: animated GLB (skin/morph), mesh sequence, USD, splats, videos.",
    "render": "Render a fitted run from its input cameras or an orbit, at any time, to MP4/PNG.",
    "eval": "Evaluate a run: held-out-frame PSNR/SSIM and, with ground truth, geometry metrics.",
    "view": "Open a fitted run in the interactive 4D viewer (web browser).",
    "scenes": "List or generate the synthetic scenes with ground truth.",
    "batch": "Reconstruct many inputs from a CSV/JSONL manifest, locally or on a Ray cluster.",
}

GLOBAL_FLAGS = {"--quiet": "no progress bars or status lines", "--debug": "show tracebacks"}


def _top_level_help() -> str:
    from recon4d import __version__

    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        f"recon4d {__version__}: one video of a moving object in, a 4D asset out.",
        "",
        "usage: recon4d COMMAND [OPTIONS]      (recon4d COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "global options (anywhere on the line):"]
    lines += [f"  {flag:<{width}}  {text}" for flag, text in GLOBAL_FLAGS.items()]
    lines += ["  --version  print the version", "",
              "example: recon4d fit clip.mp4 --out runs/clip && recon4d export runs/clip"]
    return "\n".join(lines)


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error that reached the CLI, with what to do."""
    from recon4d.errors import WRITE_REFUSED_ERRNOS

    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the disk{where}: free some space, then run the command again "
                "('recon4d fit ... --resume' continues a fit from its last checkpoint)")
    if exc.errno in WRITE_REFUSED_ERRNOS:
        return f"{reason.lower()}{where}: choose a folder you can write to, or fix its permissions"
    return f"{reason}{where} (run with --debug for the traceback)"


def _fail(message: str, code: int = 2) -> int:
    print(f"recon4d: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # Whoever read our output has gone (`recon4d fit --help | head`): stop quietly, as Unix
        # tools do, and point stdout at /dev/null so the interpreter's final flush cannot fail.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor (an embedding caller)
            pass
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from recon4d.utils import console

    console.set_quiet("--quiet" in args)
    console.set_debug("--debug" in args)
    args = [a for a in args if a not in GLOBAL_FLAGS]

    if not args or args[0] in ("-h", "--help", "help"):
        print(_top_level_help())
        return 0
    if args[0] == "--version":
        from recon4d import __version__

        print(__version__)
        return 0
    name = args[0]
    if name not in SUBCOMMANDS:
        return _fail(f"unknown command '{name}': run 'recon4d --help' for the list")

    module = importlib.import_module(f"recon4d.cli.{name}")
    import tyro

    from recon4d.cli.option_errors import OptionError, one_line_option_errors

    try:
        with one_line_option_errors():
            config = tyro.cli(module.Config, args=args[1:], prog=f"recon4d {name}",
                              description=SUBCOMMANDS[name] + "\n\n"
                              + inspect.cleandoc(module.Config.__doc__ or ""))
    except OptionError as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # tyro: --help exits 0; a panel it prints itself exits 2
        return int(exc.code or 0)

    from recon4d.errors import UserError

    previous_sigterm = _sigterm_interrupts()
    try:
        result = module.run(config)
    except UserError as exc:
        if console.is_debug():
            traceback.print_exc()
        return _fail(str(exc))
    except BrokenPipeError:
        raise
    except OSError as exc:  # the machine's side: a full disk, permissions, a vanished mount
        if console.is_debug():
            traceback.print_exc()
        return _fail(describe_os_error(exc), code=1)
    except KeyboardInterrupt as exc:  # Ctrl+C (or SIGTERM in a fit): it may say how to continue
        hint = str(exc)
        print(f"recon4d: interrupted{': ' + hint if hint else ''}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return int(result or 0)


def _raise_terminated(signum, frame) -> None:
    from recon4d.errors import Interrupted

    raise Interrupted("terminated (SIGTERM)", exit_code=128 + signum)


def _sigterm_interrupts():
    """Make SIGTERM unwind like Ctrl+C while a command runs, so its ``finally`` blocks remove
    half-written temporaries (atomic outputs) instead of the process vanishing; returns the
    previous handler (None outside the main thread, where handlers cannot be set)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        return None


def entry() -> None:  # pragma: no cover - console-script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
