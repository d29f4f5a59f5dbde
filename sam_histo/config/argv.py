"""Command lines that take dotted ``key=value`` config overrides anywhere: before, between or after options.

Every subcommand that reads a config builds its parser with :func:`overrides_parser` (or calls
:func:`add_overrides_help` on one it built) and parses with :func:`parse_with_overrides`: argparse sees the
options, and every leftover word that looks like ``key=value`` becomes an override, in order. A leftover that
is not an override (a misspelt option, a stray word) still fails as argparse's "unrecognized arguments".
A positional ``nargs="*"`` list cannot do this: argparse stops collecting it at the first option, so
``--out X k=v`` would be refused.
"""
from __future__ import annotations

import argparse
import re

# a dotted config key (``train.epochs``, ``em.min_size``, ``name``) followed by "="
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")

HELP = ("dotted key=value config overrides, accepted anywhere on the line (e.g. {example}); YAML values, "
        "so lists and mappings work: 'train.phases=[{{start_epoch: 0, stages: none, lr: 8e-5}}]'")


def add_overrides_help(parser: argparse.ArgumentParser, example: str = "train.epochs=5") -> argparse.ArgumentParser:
    """Name the overrides in ``parser``'s usage line and help (they are not an argparse argument)."""
    parser.usage = None
    base = parser.format_usage().strip().removeprefix("usage: ")
    parser.usage = f"{base} [key=value ...]"
    text = HELP.format(example=example)
    parser.epilog = f"{parser.epilog}\n\n{text}" if parser.epilog else text
    return parser


def is_override(word: str) -> bool:
    return bool(_OVERRIDE.match(word))


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_known_args(argv)``, with the ``key=value`` leftovers in ``args.overrides`` (in order)."""
    args, rest = parser.parse_known_args(argv)
    stray = [w for w in rest if not is_override(w)]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)} (config overrides look like key=value, "
                     "e.g. train.epochs=5)")
    args.overrides = [*(getattr(args, "overrides", None) or []), *rest]
    return args


def first_paragraph(doc: str | None) -> str:
    """A module docstring's first paragraph as one line: a parser description that ends where its sentence
    does (``__doc__.splitlines()[0]`` stops mid-sentence when the sentence wraps)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())
