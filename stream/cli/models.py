"""`riverstream models …`: champion/challenger comparisons on ground truth, and the policies that
promote a winning challenger into a serving graph.

* ``models compare A B`` prints the paired comparison of champion A with challenger B that the
  learner wrote with its latest snapshot (it compares the pairs given to ``learn --compare`` or
  ``RIVERSTREAM_COMPARE``): the labels both scored (n), each model's accuracy (classifiers) or
  mean absolute error (regressors) on those labels, the difference of their losses
  ``loss(A) - loss(B)`` (positive: B is better), its anytime-valid (1 - alpha) confidence
  interval (`learners.compare`: valid however often it is looked at) and the decision. Asked
  for ``B A`` when the learner compares ``A:B``, it shows the same comparison mirrored.
* ``models comparisons`` lists every pair compared.
* ``models policy GRAPH --champion A --challenger B --margin M --min-labels N`` sets the graph's
  champion/challenger policy (`stream.registry.challenger`): after a snapshot, the learner
  promotes B into the graph's champion slot once B wins by more than M over at least N labels;
  ``models policy GRAPH`` shows it, ``--delete`` removes it; ``models policies`` lists them.

Exit status: 0 when done, 2 for an error (unknown pair, Redis unreachable...). Like the other
operator commands it imports neither River nor the learner (tests/stream/cli/test_main.py).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import ConfigError, RiverstreamError
from schemas.settings import Settings
from stream.cli.terminal import exit_on_error, local_time, print_text

if TYPE_CHECKING:  # imported by the commands that run, so that `--help` stays quick
    import redis

    from stream.registry.challenger import ChallengerPolicy

models_app = typer.Typer(
    help="Champion/challenger comparisons on ground truth, and the policies that promote a "
    "challenger into a graph.",
    no_args_is_help=True,
)

err = Console(stderr=True)
out = Console()

AsJson = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
Margin = Annotated[
    float,
    typer.Option(help="Loss difference the challenger must win by (0.01: one point of accuracy)."),
]


def _client() -> tuple[redis.Redis, str]:
    import redis

    from stream.dev.services import resolve

    settings = resolve(Settings())
    if not settings.redis_url:
        raise ConfigError(
            "no Redis address: set RIVERSTREAM_REDIS_URL or run `riverstream services up`"
        )
    return redis.Redis.from_url(settings.redis_url, socket_timeout=30), settings.redis_prefix


def comparison_row(
    champion: str, challenger: str, margin: float = 0.0, min_labels: int = 0
) -> dict[str, Any]:
    """The latest comparison of ``champion`` with ``challenger`` as one JSON-ready row (the
    learner's pair, or its mirror: `ComparisonStore.find`); `RiverstreamError` when the
    learner compares neither."""
    from stream.store.comparisons import ComparisonStore

    client, prefix = _client()
    store = ComparisonStore(client, prefix)
    stored = store.find(champion, challenger)
    if stored is not None:
        return _row(stored.to_dict(margin, min_labels))
    pairs = ", ".join(f"{a}:{b}" for a, b in store.pairs()) or "none"
    raise RiverstreamError(
        f"no comparison of {champion} with {challenger} in Redis (compared: {pairs}); start the "
        f"learner with --compare {champion}:{challenger}"
    )


def _row(data: dict[str, Any]) -> dict[str, Any]:
    """Rename the statistic's a/b fields after the roles."""
    row = dict(data)
    for old, new in (("loss_a", "champion_loss"), ("loss_b", "challenger_loss"),
                     ("accuracy_a", "champion_accuracy"),
                     ("accuracy_b", "challenger_accuracy")):  # fmt: skip
        row[new] = _finite_or_none(row.pop(old))
    return row


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _decision(row: dict[str, Any]) -> str:
    if row["decision"] == "b_better":
        return f"{row['challenger']} better"
    if row["decision"] == "a_better":
        return f"{row['champion']} better"
    return "undecided"


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("champion", "challenger", "n", "metric", "of champion", "of challenger",
                "difference", "interval", "decision", "version"):  # fmt: skip
        left = col in ("champion", "challenger", "metric", "decision")
        table.add_column(col, justify="left" if left else "right")
    for r in rows:
        classify = r["kind"] == "classification"
        metric = "accuracy" if classify else "MAE"
        a = r["champion_accuracy"] if classify else r["champion_loss"]
        b = r["challenger_accuracy"] if classify else r["challenger_loss"]
        confidence = f"{100 * (1 - r['alpha']):g} %"
        interval = f"[{_number(r['lower'])}, {_number(r['upper'])}] ({confidence})"
        table.add_row(
            r["champion"], r["challenger"], str(r["n"]), metric, _number(a), _number(b),
            _number(r["difference"]), interval, _decision(r), f"v{r['version']}",
        )  # fmt: skip
    return table


@models_app.command("compare")
def compare(
    champion: Annotated[str, typer.Argument(help="The champion (model A).")],
    challenger: Annotated[str, typer.Argument(help="The challenger (model B).")],
    margin: Margin = 0.0,
    min_labels: Annotated[int, typer.Option(help="Labels before deciding.")] = 0,
    as_json: AsJson = False,
) -> None:
    """The comparison of CHAMPION with CHALLENGER on the labels both scored."""
    with exit_on_error():
        row = comparison_row(champion, challenger, margin, min_labels)
    if as_json:
        out.print_json(json.dumps(row))
        return
    loss = "0/1 error" if row["kind"] == "classification" else "absolute error"
    title = (
        f"{champion} (champion) vs {challenger} (challenger): difference = {loss} of "
        f"{champion} - {challenger} (positive: {challenger} better), margin {margin:g}"
    )
    out.print(_table([row], title))
    written = local_time(row["written_at"])
    err.print(f"[dim]as of snapshot v{row['version']}, written {written}[/]", highlight=False)


@models_app.command("comparisons")
def comparisons(as_json: AsJson = False) -> None:
    """Every pair the learner compares, as of its latest snapshot."""
    from stream.store.comparisons import ComparisonStore

    with exit_on_error():
        client, prefix = _client()
        store = ComparisonStore(client, prefix)
        rows = []
        for a, b in store.pairs():
            stored = store.get(a, b)
            if stored is not None:
                rows.append(_row(stored.to_dict()))
    if as_json:
        out.print_json(json.dumps(rows))
        return
    out.print(_table(rows, f"{len(rows)} comparisons"))


def _policies(by: str | None = None) -> Any:
    from stream.registry.challenger import ChallengerPolicies

    client, prefix = _client()
    return ChallengerPolicies(client, prefix, by=by)


def _policy_text(policy: ChallengerPolicy) -> str:
    state = "armed"
    if policy.promoted is not None:
        state = f"promoted (graph v{policy.promoted.get('graph_version')})"
    return (
        f"{policy.graph}: promote {policy.challenger} over {policy.champion} when it wins by more "
        f"than {policy.margin:g} after at least {policy.min_labels} labels; {state}"
    )


@models_app.command("policy")
def policy(
    graph: Annotated[str, typer.Argument(help="Serving graph.")],
    champion: Annotated[str | None, typer.Option(help="The model the graph serves.")] = None,
    challenger: Annotated[str | None, typer.Option(help="The model that may replace it.")] = None,
    margin: Margin = 0.0,
    min_labels: Annotated[int, typer.Option(help="Labels both scored, at least.")] = 500,
    delete: Annotated[bool, typer.Option(help="Remove the graph's policy.")] = False,
    by: Annotated[str | None, typer.Option(help="Who sets it (default: OS user).")] = None,
    as_json: AsJson = False,
) -> None:
    """Set (with --champion and --challenger), show or --delete the policy of GRAPH."""
    with exit_on_error():
        registry = _policies(by)
        if delete:
            removed = registry.delete(graph)
            data: Any = {"graph": graph, "deleted": removed}
            text = f"{graph}: policy deleted" if removed else f"{graph}: no policy"
        elif champion is not None or challenger is not None:
            if champion is None or challenger is None:
                raise ConfigError("give both --champion and --challenger")
            found = registry.set(graph, champion, challenger, margin=margin, min_labels=min_labels)
            data, text = json.loads(found.to_json()), _policy_text(found)
        else:
            found = registry.get(graph)
            if found is None:
                raise RiverstreamError(f"graph {graph} has no champion/challenger policy")
            data, text = json.loads(found.to_json()), _policy_text(found)
    if as_json:
        out.print_json(json.dumps(data))
    else:
        print_text(text, out)


@models_app.command("policies")
def policies(as_json: AsJson = False) -> None:
    """Every graph's champion/challenger policy."""
    with exit_on_error():
        found = _policies().all()
    if as_json:
        out.print_json(json.dumps([json.loads(p.to_json()) for p in found]))
        return
    for p in found:
        print_text(_policy_text(p), out)
    if not found:
        out.print("no champion/challenger policies")
