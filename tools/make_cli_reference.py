"""Generate the command reference in README.md (between `<!-- cli-reference:start -->` and
`<!-- cli-reference:end -->`) from the `vvtrt` click command tree: every command, its arguments and every
option with its default and limits, as `vvtrt CMD --help` gives them.

    python tools/make_cli_reference.py            # rewrite README.md in place
    python tools/make_cli_reference.py --check    # exit 1 if README's reference is stale
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
# the order a user meets them in; commands not listed follow, alphabetically
ORDER = ["demo", "export", "convert", "build", "parity", "synth", "bench", "report", "serve", "loadtest",
         "bench-serving", "voices"]


def walk(group: click.Group, prefix: str = "vvtrt"):
    """(full command name, command) of every leaf command, in the order `--help` lists them."""
    ctx = click.Context(group, info_name=prefix)
    names = group.list_commands(ctx)
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from walk(cmd, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", cmd


def _limits(p: click.Parameter) -> str:
    t = p.type
    if isinstance(t, click.Choice):
        return "one of " + ", ".join(f"`{c}`" for c in t.choices)
    if isinstance(t, click.IntRange):
        lo, hi = t.min, t.max
        return f"{lo} to {hi}" if lo is not None and hi is not None else (f"≥ {lo}" if lo is not None else f"≤ {hi}")
    if hasattr(t, "lo") and hasattr(t, "hi"):  # vvtrt's finite float range
        return f"{t.lo:g} to {t.hi:g}"
    return ""


def _default(p: click.Option) -> str:
    if p.required:
        return "required"
    if p.is_flag:
        return "off"
    if p.multiple:
        return "none (repeatable)"
    if p.default is None or p.default == "":
        return "—"
    return f"`{p.default}`"


def _cell(text: str) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def command_section(name: str, cmd: click.Command) -> str:
    args = " ".join(a.human_readable_name for a in cmd.params if isinstance(a, click.Argument))
    lines = [f"#### `{name}{' ' + args if args else ''}`", "", _cell(cmd.help or cmd.short_help or ""), "",
             "| option | default | limits | meaning |", "|---|---|---|---|"]
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.hidden:
            continue
        flags = ", ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
        lines.append(f"| {flags} | {_default(p)} | {_limits(p)} | {_cell(p.help)} |")
    return "\n".join(lines)


def reference() -> str:
    from vvtrt.cli import cli

    return "\n\n".join(command_section(name, cmd) for name, cmd in walk(cli))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{reference()}\n{END}{tail}"
    if args.check:
        if new != text:
            print("README.md's command reference is stale: run python tools/make_cli_reference.py", file=sys.stderr)
        sys.exit(0 if new == text else 1)
    readme.write_text(new)


if __name__ == "__main__":
    main()
