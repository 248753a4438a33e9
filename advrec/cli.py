"""The ``advrec`` command line: one verb per module in :mod:`advrec.commands` (``_*`` modules are helpers)."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import warnings
from typing import TextIO

from advrec import __version__, commands
from advrec_common.errors import AdvrecError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advrec", description="Do robust image feature extractors protect visual recommenders?"
    )
    parser.add_argument("--version", action="version", version=f"advrec {__version__}")
    parser.add_argument("--debug", dest="debug_all", action="store_true",
                        help="print the traceback of an unexpected error (any command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers, not verbs
            continue
        module = importlib.import_module(f"advrec.commands.{info.name}")
        module.register(sub)
    return parser


_ADVREC_PACKAGES = ("advrec", "advrec_common", "services", "gateway")
_python_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """advrec's own warnings (rows dropped while loading a catalog ...) as one line for people, like its
    other warnings; a library's as Python shows them (source path and code line)."""
    if category.__module__.split(".")[0] in _ADVREC_PACKAGES:
        print(f"advrec: warning: {message}", file=file or sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    # idle OpenMP threads sleep instead of spinning (a busy machine otherwise loses whole cores)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    warnings.showwarning = _show_warning
    try:
        parser = build_parser()  # some commands read the settings (ADVREC_*) as they load
    except AdvrecError as exc:
        print(f"advrec: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not as a warning at exit
        return code
    except BrokenPipeError:
        # the output's reader stopped reading (`advrec report RUN | head`): stop quietly, as cat does;
        # later writes (the interpreter's last flush) go nowhere instead of failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except AdvrecError as exc:
        print(f"advrec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nadvrec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user mistake: one paragraph, the traceback on request
        if getattr(args, "debug", False) or getattr(args, "debug_all", False):
            raise
        if isinstance(exc, OSError) and exc.filename is not None:
            # a path the user gave (or the disk) refused it: name it; not a bug of advrec
            where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
            print(f"advrec: error: {where}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"advrec: error: unexpected {type(exc).__name__}: {exc}. This is most likely a bug in advrec; "
              f"rerun with --debug to see the traceback.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
