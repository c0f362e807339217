"""`riverstream graphs …`: validate, apply, list, show, roll back and delete serving graphs.

A graph file is YAML or JSON (``.json`` is read as JSON; anything else as YAML, which accepts JSON
as well, with YAML 1.2's booleans: only ``true``/``false``, so that ``in: [FR, NO]`` or ``eq:
yes`` hold strings); its format is in `schemas.graphs` and its JSON Schema in
``schemas/jsonschema/graph.json``. ``validate`` works offline (no Redis); every other command
talks to the graph registry (`stream.registry.graphs`) of the configured Redis and prefix.

Exit status: 0 when done; 1 when the document is invalid, or does not fit the models in Redis
(``apply``, ``rollback``), with ``error: FILE: PATH: DETAIL`` on stderr; 2 for anything else
(unknown graph or version, Redis unreachable...). A refused operation has changed nothing.

Every command prints a line or table for people and, with ``--json``, one JSON document. Like the
other operator commands it imports neither River nor the learner (tests/stream/cli/test_main.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from schemas.errors import ConfigError, RiverstreamError
from schemas.graph_errors import GraphError
from schemas.graph_parser import parse_graph
from schemas.graphs import walk
from schemas.settings import Settings
from stream.cli.terminal import emit, local_time, print_error

if TYPE_CHECKING:  # imported by the commands that run, so that `--help` stays quick
    from stream.registry.graphs import GraphRegistry

graphs_app = typer.Typer(
    help="Serving graphs (pipelines, ensembles, rules, switches, splits, shadows): "
    "validate, apply, list, show, roll back, delete.",
    no_args_is_help=True,
)

err = Console(stderr=True)
out = Console()

File = Annotated[
    Path, typer.Argument(help="Graph document, YAML or JSON.", exists=True, dir_okay=False)
]
Name = Annotated[str, typer.Argument(help="Graph name.")]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
By = Annotated[str | None, typer.Option(help="Who acts, for the history (default: OS user).")]
Reason = Annotated[str, typer.Option(help="Why, for the history.")]


class DocumentError(RiverstreamError):
    """A graph file cannot be read or decoded (before its content is even looked at)."""


def load_document(path: Path) -> Any:
    """The decoded content of a YAML or JSON graph file (`DocumentError` if it is neither)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"{path}: cannot read: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise DocumentError(f"{path}: invalid JSON: {exc}") from None
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        raise DocumentError(f"{path}: reading YAML needs PyYAML (pip install pyyaml)") from None
    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        raise DocumentError(f"{path}: invalid YAML: {exc}") from None


_BOOLEAN = r"^(?:true|True|TRUE|false|False|FALSE)$"


@functools.cache
def _yaml_loader() -> Any:
    """PyYAML's `SafeLoader` with YAML 1.2's booleans: only true/false, so that ``NO`` (Norway)
    or ``on`` in a condition stays a string, as in JSON."""
    import re

    import yaml

    loader: Any = type("GraphLoader", (yaml.SafeLoader,), {})
    loader.yaml_implicit_resolvers = {  # its own copy: SafeLoader's is left as it is
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(_BOOLEAN), list("tTfF"))
    return loader


def open_graphs(by: str | None = None) -> GraphRegistry:
    """The graph registry of the configured Redis (addresses from the local services if unset);
    no signing key needed: graph documents are data."""
    import redis

    from stream.dev.services import resolve
    from stream.registry.graphs import GraphRegistry

    settings = resolve(Settings())
    if not settings.redis_url:
        raise ConfigError(
            "no Redis address: set RIVERSTREAM_REDIS_URL or run `riverstream services up`"
        )
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=30)
    return GraphRegistry(client, settings.redis_prefix, by=by)


@contextlib.contextmanager
def _errors(source: Path | None = None) -> Iterator[None]:
    try:
        yield
    except (GraphError, DocumentError) as exc:
        where = f"{source}: " if source is not None and isinstance(exc, GraphError) else ""
        print_error(f"{where}{exc}", err)
        raise typer.Exit(1) from None
    except RiverstreamError as exc:
        print_error(exc, err)
        raise typer.Exit(2) from None


# -- offline --------------------------------------------------------------------------------
@graphs_app.command("validate")
def validate(file: File, as_json: AsJson = False) -> None:
    """Check FILE offline (no Redis); model names are checked by `apply`."""
    with _errors(file):
        spec = parse_graph(load_document(file))
    nodes = sum(1 for _ in walk(spec.root))
    models = spec.model_names()
    data = {"ok": True, "graph": spec.name, "nodes": nodes, "models": list(models)}
    emit(out, as_json, data, f"OK: graph {spec.name}: {nodes} nodes, models {', '.join(models)}")


# -- registry -------------------------------------------------------------------------------
@graphs_app.command("apply")
def apply(file: File, reason: Reason = "", by: By = None, as_json: AsJson = False) -> None:
    """Store FILE as a new version of its graph and serve it (refused if a model is missing)."""
    with _errors(file):
        document = load_document(file)
        applied = open_graphs(by).apply(document, reason=reason)
    if applied.changed:
        text = f"{applied.name}: applied v{applied.version} (was {applied.previous or '-'})"
    else:
        text = f"{applied.name}: unchanged, v{applied.version} is the same document"
    emit(out, as_json, applied.to_dict(), text)


@graphs_app.command("list")
def list_graphs(as_json: AsJson = False) -> None:
    """Every graph: the version served, the versions kept, the models it names."""
    with _errors():
        registry = open_graphs()
        rows: list[dict[str, Any]] = []
        for name in registry.names():
            infos = registry.versions(name)
            served = next((i for i in infos if i.promoted), None)
            rows.append({
                "graph": name,
                "version": served.version if served else None,
                "versions": len(infos),
                "models": list(served.models) if served else [],
            })  # fmt: skip
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} graphs")
    for col in ("graph", "serving", "versions", "models"):
        table.add_column(col, justify="right" if col in ("serving", "versions") else "left")
    for r in rows:
        serving = "-" if r["version"] is None else str(r["version"])
        table.add_row(r["graph"], serving, str(r["versions"]), ", ".join(r["models"]))
    out.print(table)


@graphs_app.command("show")
def show(
    name: Name,
    version: Annotated[int | None, typer.Option(help="Version (default: the served one).")] = None,
    as_json: AsJson = False,
) -> None:
    """The document of NAME, as JSON that `apply` accepts back (the version on stderr)."""
    with _errors():
        info = open_graphs().show(name, version)
    if as_json:
        out.print_json(json.dumps(info.to_dict()))
        return
    mark = " (serving)" if info.promoted else ""
    err.print(f"{name} v{info.version}{mark}: models {', '.join(info.models)}", highlight=False)
    out.print_json(json.dumps(info.document))


@graphs_app.command("history")
def history(name: Name, as_json: AsJson = False) -> None:
    """Every apply, rollback and delete of NAME, oldest first."""
    with _errors():
        entries = open_graphs().history(name)
    if as_json:
        out.print_json(json.dumps([e.to_dict() for e in entries]))
        return
    table = Table(title=f"graph {name}: history")
    for col in ("time", "action", "from", "to", "by", "reason"):
        table.add_column(col)
    for e in entries:
        table.add_row(
            local_time(e.time), e.action, str(e.from_ or "-"), str(e.to or "-"), Text(e.by),
            Text(e.reason),
        )  # fmt: skip
    out.print(table)


@graphs_app.command("rollback")
def rollback(
    name: Name,
    reason: Annotated[str, typer.Option(help="Why, for the history (required).")],
    to: Annotated[
        int | None, typer.Option(help="Version to serve (default: the one served before).")
    ] = None,
    by: By = None,
    as_json: AsJson = False,
) -> None:
    """Serve an earlier version of NAME again (default: the one served before)."""
    with _errors():
        done = open_graphs(by).rollback(name, to, reason=reason)
    emit(out, as_json, done.to_dict(), f"{name}: serving v{done.version} (was {done.previous})")


@graphs_app.command("delete")
def delete(name: Name, reason: Reason = "", by: By = None, as_json: AsJson = False) -> None:
    """Stop serving NAME and remove its versions (its history is kept)."""
    with _errors():
        served = open_graphs(by).delete(name, reason)
    emit(out, as_json, {"graph": name, "deleted": True, "was": served},
          f"{name}: deleted (was serving v{served})")  # fmt: skip
