"""The `vggt-deploy` click group and what every command shares.

Each command parses its options, builds a typed config and calls one library
function. A `UserError` becomes one line on stderr and exit code 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import click

from vggt_deploy.errors import UserError
from vggt_deploy.paths import default_model_dir, plan_path
from vggt_deploy.quant.plan_targets import TARGETS

_USER_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                     errno.EROFS, errno.ENOSPC, errno.ELOOP, errno.EEXIST}


def _short(name: object, limit: int = 120) -> str:
    text = str(name)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]} ({len(text)} characters)"


def one_line(message: str) -> str:
    """A message as one line (multi-line details are joined with '; ')."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


class _Group(click.Group):
    """The root group: every user mistake, ours or click's, is one `error:` line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(2)
        except OSError as exc:
            if exc.errno not in _USER_PATH_ERRNOS:
                raise
            # A path the user gave that the file system refuses (too long, missing folder, permissions...).
            click.echo(f"error: {_short(exc.filename)}: {exc.strerror}; check the path", err=True)
            sys.exit(2)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.ClickException as exc:  # bad option values, unknown options, missing arguments
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def _command_line(ctx: click.Context) -> str:
    """The command as a user would retype it: options that differ from their defaults."""
    parts = [ctx.command_path]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False or value == param.default or not isinstance(param, click.Option):
            continue
        opt = max(param.opts, key=len)
        parts.append(opt if param.is_flag else f"{opt} {value}")
    return " ".join(parts)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vggt-deploy")
def main() -> None:
    """Export, quantize, build and benchmark VGGT grounding models for the edge.

    Start with `vggt-deploy eval` on the shipped model, or `vggt-deploy data
    generate` to see the synthetic grounding scenes it was trained on.
    """


def plan_file(value: str | None) -> Path | None:
    """A plan path, or a shipped plan's short name (`mixed` -> the package's plans/mixed.yaml)."""
    return plan_path(value) if value is not None else None


def resolve_model(value: Path | None) -> Path:
    """The model folder a command works on: `--model`, else the default model (see `vggt_deploy.paths`)."""
    return value if value is not None else default_model_dir()


MODEL_HELP = "Model folder (safetensors + config.json) [default: models/vggt_small, found as described in README]."
TARGET_CHOICE = click.Choice(TARGETS)
