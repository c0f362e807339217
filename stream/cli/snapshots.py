"""`riverstream snapshots …`: versions, promotion, pin, rollback, history, export and import.

Every command prints a rich table or line for people and, with ``--json``, one JSON document for
scripts. On any error it prints ``error: …`` on stderr and exits with status 2; the registry
validates before it writes, so nothing has changed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from schemas.errors import RegistryError
from schemas.settings import Settings
from stream.cli.terminal import emit, exit_on_error, local_time, print_error

if TYPE_CHECKING:  # imported by the commands that run, so that `--help` stays quick
    from stream.registry.registry import Registry, VersionInfo

snapshots_app = typer.Typer(
    help="Model versions: list, promote, pin, roll back, export and import.",
    no_args_is_help=True,
)

err = Console(stderr=True)
out = Console()

Model = Annotated[str, typer.Argument(help="Model name.")]
Version = Annotated[int, typer.Argument(help="Version number.")]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
By = Annotated[str | None, typer.Option(help="Who acts, for the history (default: OS user).")]
Reason = Annotated[str, typer.Option(help="Why, for the history.")]


def open_registry(by: str | None = None) -> Registry:
    """The registry of the configured Redis (addresses from the local services if unset).

    It imports the registry and the store, never the learner: River and SciPy take ≈ 1 s to
    import and no operator command needs them (tests/stream/cli/test_main.py).
    """
    from stream.dev.services import resolve
    from stream.registry.registry import Registry
    from stream.store.snapshots import open_store

    settings = resolve(Settings())
    return Registry(open_store(settings), by=by, signing_key=settings.require_snapshot_key())


def _metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))


def parse_range(text: str) -> tuple[float, float]:
    """``FROM-TO`` (times may be negative or use exponents) → ``(from, to)``.

    >>> parse_range("100-250.5"), parse_range("-5--1"), parse_range("1e3-2e3")
    ((100.0, 250.5), (-5.0, -1.0), (1000.0, 2000.0))
    """
    splits = []
    for i, ch in enumerate(text):
        if ch == "-" and 0 < i < len(text) - 1 and text[i - 1] not in "eE-":
            with contextlib.suppress(ValueError):
                splits.append((float(text[:i]), float(text[i + 1 :])))
    if len(splits) != 1:
        raise RegistryError(f"bad exclude range {text!r}: give FROM_TIME-TO_TIME, e.g. 100-250")
    return splits[0]


# -- reading --------------------------------------------------------------------------------
@snapshots_app.command("list")
def list_versions(model: Model, as_json: AsJson = False) -> None:
    """Versions of MODEL: created, samples, metrics, size; marks promoted, pinned, serving."""
    with exit_on_error():
        infos = open_registry().versions(model)
    if as_json:
        out.print_json(json.dumps([i.to_dict() for i in infos]))
        return
    table = Table(title=f"{model}: {len(infos)} versions")
    for col in ("version", "created", "samples", "metrics", "size", "checkpoint", "marks"):
        table.add_column(col, justify="right" if col in ("version", "samples", "size") else "left")
    for i in infos:
        m = i.meta
        marks = " ".join(
            name for name, on in (("serving", i.serving), ("promoted", i.promoted), ("pinned", i.pinned)) if on
        )  # fmt: skip
        table.add_row(
            str(m.version), local_time(m.created_at), str(m.samples_learned), _metrics(m.metrics),
            f"{m.size:,}", "yes" if i.has_checkpoint else "-", marks,
        )  # fmt: skip
    out.print(table)


@snapshots_app.command("show")
def show(
    model: Model,
    version: Version,
    verify: Annotated[bool, typer.Option(help="Check checksum and signature.")] = False,
    as_json: AsJson = False,
) -> None:
    """All metadata of one version; --verify checks its checksum and signature."""
    with exit_on_error():
        registry = open_registry()
        info = registry.info(model, version)
        checked = registry.verify(model, version) if verify else None
    data = info.to_dict()
    if checked is not None:
        data["verified"], data["verify_detail"] = checked
    if as_json:
        out.print_json(json.dumps(data))
    else:
        _show_table(info, data)
    if checked is not None and not checked[0]:
        print_error(f"verification failed: {checked[1]}", err)
        raise typer.Exit(2)


def _show_table(info: VersionInfo, data: dict[str, Any]) -> None:
    table = Table(title=f"{info.meta.model} v{info.meta.version}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in data.items():
        if name == "created_at":
            value = local_time(value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        table.add_row(name, Text(str(value)))
    out.print(table)


@snapshots_app.command("history")
def history(model: Model, as_json: AsJson = False) -> None:
    """Every promotion, rollback, pin, unpin, import and prune of MODEL, oldest first."""
    with exit_on_error():
        entries = open_registry().history(model)
    if as_json:
        out.print_json(json.dumps([e.to_dict() for e in entries]))
        return
    table = Table(title=f"{model}: history")
    for col in ("time", "action", "from", "to", "by", "reason", "resume/exclude"):
        table.add_column(col)
    for e in entries:
        extra = " ".join(
            str(x) for x in (e.resume, e.exclude or "", e.detail.get("removed", "")) if x
        )
        table.add_row(
            local_time(e.time), e.action, str(e.from_ or "-"), str(e.to or "-"), Text(e.by),
            Text(e.reason), Text(extra),
        )  # fmt: skip
    out.print(table)


# -- pointer changes ------------------------------------------------------------------------
@snapshots_app.command("promote")
def promote(
    model: Model, version: Version, reason: Reason = "", by: By = None, as_json: AsJson = False
) -> None:
    """Serve VERSION of MODEL (unless it is pinned elsewhere)."""
    with exit_on_error():
        registry = open_registry(by)
        before = registry.promote(model, version, reason)
        serving = registry.serving_version(model)
    data = {"model": model, "from": before, "to": version, "serving": serving}
    emit(out, as_json, data, f"{model}: promoted v{version} (was {before}); serving v{serving}")


@snapshots_app.command("rollback")
def rollback(
    model: Model,
    reason: Annotated[str, typer.Option(help="Why (required), for the history.")],
    to: Annotated[
        int | None, typer.Option(help="Target version (default: the one promoted before).")
    ] = None,
    resume: Annotated[
        str, typer.Option(help="skip: continue from the current input; replay: from the target.")
    ] = "skip",
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="FROM_TIME-TO_TIME: events not re-learned (replay). Repeatable."),
    ] = None,
    by: By = None,
    as_json: AsJson = False,
) -> None:
    """Serve an earlier version now; the learner continues from it (skip or replay)."""
    with exit_on_error():
        ranges = [parse_range(x) for x in exclude or []]
        registry = open_registry(by)
        cmd = registry.rollback(model, to, resume=resume, exclude=ranges, reason=reason)
        learner = registry.owner(model)
    data = {"model": model, "to": cmd.to, "resume": cmd.resume, "exclude": cmd.exclude,
            "command": cmd.id, "learner": learner}  # fmt: skip
    text = f"{model}: rolled back to v{cmd.to} (resume {cmd.resume}); serving v{cmd.to}"
    emit(out, as_json, data, text + (f", excluding {cmd.exclude}" if cmd.exclude else ""))


@snapshots_app.command("pin")
def pin(
    model: Model, version: Version, reason: Reason = "", by: By = None, as_json: AsJson = False
) -> None:
    """Keep serving VERSION while learning goes on."""
    with exit_on_error():
        open_registry(by).pin(model, version, reason)
    emit(out, as_json, {"model": model, "pinned": version}, f"{model}: pinned at v{version}")


@snapshots_app.command("unpin")
def unpin(model: Model, reason: Reason = "", by: By = None, as_json: AsJson = False) -> None:
    """Serve the promoted version again."""
    with exit_on_error():
        serving = open_registry(by).unpin(model, reason)
    emit(
        out, as_json, {"model": model, "serving": serving}, f"{model}: unpinned; serving v{serving}"
    )


@snapshots_app.command("policy")
def policy(
    model: Model,
    name: Annotated[str | None, typer.Argument(help="always, manual or guarded.")] = None,
    margin: Annotated[float, typer.Option(help="guarded: allowed metric loss.")] = 0.0,
    metric: Annotated[str | None, typer.Option(help="guarded: metric compared.")] = None,
    reason: Reason = "",
    by: By = None,
    as_json: AsJson = False,
) -> None:
    """Show, or set, how new snapshots of MODEL are promoted."""
    with exit_on_error():
        registry = open_registry(by)
        result = (
            registry.policy(model)
            if name is None
            else registry.set_policy(model, name, margin, metric, reason)
        )
    text = f"{model}: policy {result.policy}"
    if result.policy == "guarded":
        text += f" (margin {result.margin:g}, metric {result.metric or 'first by name'})"
    emit(out, as_json, {"model": model, **json.loads(result.to_json())}, text)


# -- files and retention --------------------------------------------------------------------
@snapshots_app.command("export")
def export(
    model: Model,
    version: Version,
    file: Annotated[Path, typer.Argument(help="Signed file to write.")],
    as_json: AsJson = False,
) -> None:
    """Write VERSION (and its checkpoint) to a signed file."""
    with exit_on_error():
        path = open_registry().export(model, version, file)
    size = path.stat().st_size
    emit(out, as_json, {"model": model, "version": version, "file": str(path), "bytes": size},
          f"{model} v{version} → {path} ({size:,} bytes)")  # fmt: skip


@snapshots_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="File made by `snapshots export`.")],
    reason: Reason = "",
    by: By = None,
    as_json: AsJson = False,
) -> None:
    """Verify the signature of FILE, then add it as a new (not promoted) version."""
    with exit_on_error():
        registry = open_registry(by)
        model, version = registry.import_(file, reason)
    emit(out, as_json, {"file": str(file), "model": model, "version": version},
          f"imported {file} as {model} v{version} (not promoted)")  # fmt: skip


@snapshots_app.command("prune")
def prune(
    model: Model,
    keep_last: Annotated[int, typer.Option(help="Newest versions kept.")],
    reason: Reason = "",
    by: By = None,
    as_json: AsJson = False,
) -> None:
    """Delete old versions; promoted, pinned, rollback-target and recent ones are kept."""
    with exit_on_error():
        removed = open_registry(by).prune(model, keep_last, reason=reason)
    emit(out, as_json, {"model": model, "removed": removed},
          f"{model}: removed {len(removed)} versions {removed}")  # fmt: skip


# -- learner groups (`stream.registry.owners`) ----------------------------------------------
@snapshots_app.command("handover")
def handover(
    model: Model,
    to: Annotated[str, typer.Option("--to", help="The learner that learns MODEL from now on.")],
    reason: Reason = "",
    by: By = None,
    as_json: AsJson = False,
) -> None:
    """Move MODEL to another learner: the previous one drops it, the new one takes it over."""
    with exit_on_error():
        done = open_registry(by).handover(model, to, reason)
    previous, command = done.previous, done.release
    data = {"model": model, "from": previous, "to": to, "version": command.to or None,
            "command": command.id,
            "moved_commands": [c.id for c in done.moved]}  # fmt: skip
    text = (
        f"{model}: learned by {to!r} from now on (was {previous!r}); start (or restart) "
        f"learner {to!r} with --model {model}=SPEC; learner {previous!r} drops it"
    )
    for moved in done.moved:
        text += (
            f"\nrollback {moved.id} of {model} to v{moved.to} ({moved.resume}), not carried out "
            f"by {previous!r} yet: moved to learner {to!r}, which carries it out"
        )
    emit(out, as_json, data, text)


@snapshots_app.command("owners")
def owners(as_json: AsJson = False) -> None:
    """Which learner learns each model."""
    with exit_on_error():
        table = open_registry().owners()
    if as_json:
        emit(out, True, table, "")
        return
    view = Table(title="models by learner")
    view.add_column("model")
    view.add_column("learner")
    for model, learner in table.items():
        view.add_row(model, learner)
    out.print(view)
