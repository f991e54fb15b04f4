"""The `ssamba` command line: one sub-command per module, loaded on demand.

Each sub-command lives in the module that owns the feature and exposes two functions:
``add_arguments(parser)`` and ``main(args) -> int``. Its docstring's first line is the
one-line help, the rest (examples) is shown by ``ssamba <command> --help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command name -> module implementing it
COMMANDS: dict[str, str] = {
    "info": "ssamba.info",
    "build": "ssamba.models.build",
    "shards": "ssamba.data.shards",
    "stats": "ssamba.data.stats",
    "pretrain": "ssamba.train.pretrain",
    "export": "ssamba.interop.export",
    "import": "ssamba.interop.import_official",
    "embed": "ssamba.interop.embed",
    "probe": "ssamba.train.probe",
    "finetune": "ssamba.train.finetune",
    "predict": "ssamba.interop.predict",
}


def _load(name: str):
    return importlib.import_module(COMMANDS[name])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; only `command`'s module is imported (keeps `--help` fast)."""
    parser = argparse.ArgumentParser(
        prog="ssamba",
        description="Self-supervised audio representation learning with bidirectional Mamba encoders.",
        epilog="Run `ssamba <command> --help` for the options and examples of each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        if command is not None and name != command:
            sub.add_parser(name, help=f"(see `ssamba {name} --help`)")
            continue
        module = _load(name)
        doc = (module.__doc__ or name).strip()
        summary, _, details = doc.partition("\n")
        p = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=details.strip() or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
    return parser


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
    return int(_load(args.command).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
