"""The `ssamba` command line: one sub-command per module, loaded on demand.

Each sub-command is a module (``ssamba/commands/<command>.py``; ``build`` is ``ssamba.models.build``)
that exposes two functions: ``add_arguments(parser)`` and ``main(args) -> int``. Its docstring's
first line is the one-line help, the rest (examples) is shown by ``ssamba <command> --help``.
A command module imports nothing that imports torch at its top level: ``main`` imports the library
code that does the work, so ``ssamba <command> --help`` stays fast. ``ssamba --help`` reads the
summaries from the modules' source files without importing them.

Errors end a command with one line on stderr, ``ssamba <command>: error: <message>``, and exit
status 2 for bad input (:class:`ssamba.errors.UserError`, ``ValueError``, a missing file; a
``UserError`` may choose another status) or 1 for a failure of the system (other ``OSError``: a full
disk, a missing permission; ``ImportError``: a missing optional package). ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from ssamba import __version__
from ssamba.errors import UserError

# command name -> module implementing it
COMMANDS: dict[str, str] = {
    "info": "ssamba.commands.info",
    "build": "ssamba.models.build",
    "shards": "ssamba.commands.shards",
    "stats": "ssamba.commands.stats",
    "pretrain": "ssamba.commands.pretrain",
    "export": "ssamba.commands.export",
    "import": "ssamba.commands.import_official",
    "embed": "ssamba.commands.embed",
    "probe": "ssamba.commands.probe",
    "finetune": "ssamba.commands.finetune",
    "predict": "ssamba.commands.predict",
}
CHECKPOINT_READERS = ("pretrain", "export", "import", "embed")
"""Commands that read checkpoints: they accept ``--unsafe-load``."""
UNSAFE_LOAD_HELP = (
    "allow checkpoints that need full unpickling (arbitrary Python objects): this runs code stored in "
    "the file, so use it only for files you trust; by default only tensors, numbers, strings and containers are read"
)
SYSTEM_ERROR_STATUS = 1
INPUT_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130


def _load(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name])


def _docstring(name: str) -> str:
    """The module docstring of command ``name``, read from its source file (the module is not imported)."""
    spec = importlib.util.find_spec(COMMANDS[name])
    if spec is None or spec.origin is None:
        return name
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    return ast.get_docstring(tree) or name


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; only `command`'s module is imported (keeps `--help` fast)."""
    parser = argparse.ArgumentParser(
        prog="ssamba",
        description="Self-supervised audio representation learning with bidirectional Mamba encoders.",
        epilog="Run `ssamba <command> --help` for the options and examples of each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ssamba {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of a one-line message")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        if command is not None and name != command:
            sub.add_parser(name, help=f"(see `ssamba {name} --help`)")
            continue
        module = _load(name) if name == command else None
        doc = ((module.__doc__ if module else _docstring(name)) or name).strip()
        summary, _, details = doc.partition("\n")
        p = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=details.strip() or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if module is not None:
            module.add_arguments(p)
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the Python traceback of an error")
            if name in CHECKPOINT_READERS:
                p.add_argument("--unsafe-load", action="store_true", help=UNSAFE_LOAD_HELP)
    return parser


def one_line(error: BaseException) -> str:
    """An error's message on one line (its lines joined with '; '; the type name when it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def _exit_status(error: BaseException) -> int:
    if isinstance(error, UserError):
        return error.exit_code
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return INPUT_ERROR_STATUS
    if isinstance(error, (OSError, ImportError)):
        return SYSTEM_ERROR_STATUS
    return INPUT_ERROR_STATUS


def _checkpoint_policy(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Within the command, checkpoints are read with the policy of ``--unsafe-load``."""
    if not getattr(args, "unsafe_load", False):
        return contextlib.nullcontext()
    from ssamba.interop.checkpoints import unsafe_loading

    return unsafe_loading()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ssamba` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with _checkpoint_policy(args):
            return int(_load(args.command).main(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"ssamba {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS
    except (UserError, ValueError, OSError, ImportError) as error:
        if args.debug:
            raise
        print(f"ssamba {args.command}: error: {one_line(error)}", file=sys.stderr)
        return _exit_status(error)


if __name__ == "__main__":
    sys.exit(main())
