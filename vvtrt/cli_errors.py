"""How every `vvtrt` command reports failure: typed errors and the environment's OS errors as one line on
stderr with exit code 2, an interrupt as exit 130; never a traceback. Shared by `vvtrt.cli` and the
command groups it registers (which must not import `vvtrt.cli` itself)."""
from __future__ import annotations

import functools
import sys

import click

from vvtrt.errors import VvtrtError


def one_line(message: str) -> str:
    """A message as one line (a library's multi-line text pasted into one of ours stays one line)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VvtrtError as exc:
            click.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(2)
        except OSError as exc:  # the environment's (a full disk, a vanished file), never a traceback
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"error: {one_line(str(exc.strerror or exc))}{where}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


def require_extra(command: str, extra: str, *modules: str) -> None:
    """A `BackendUnavailableError` naming the install command when a module of an optional extra is missing."""
    import importlib.util

    from vvtrt.errors import BackendUnavailableError

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailableError(f"{command} needs the `{extra}` extra ({', '.join(missing)} not installed): "
                                      f"pip install -e \".[{extra}]\" in the repository (or pip install "
                                      f"{' '.join(missing)})")
