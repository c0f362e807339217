"""Generated Grafana files are committed, up to date and well formed."""

from __future__ import annotations

import json
import re

import pytest

from observability import dashboards


def test_committed_files_match_the_generator():
    assert dashboards.stale_outputs() == [], "run: python -m observability.dashboards"


def test_check_flag_fails_on_a_difference(tmp_path, monkeypatch):
    monkeypatch.setattr(dashboards, "ROOT", tmp_path)
    assert dashboards.main(["--check"]) == 1
    assert dashboards.main([]) == 0
    assert dashboards.main(["--check"]) == 0
    (tmp_path / "dashboards" / "riverstream-serving.json").write_text("{}")
    assert dashboards.main(["--check"]) == 1


def test_output_is_deterministic():
    assert [dashboards.render(u) for u in dashboards.DASHBOARDS] == [
        dashboards.render(u) for u in dashboards.DASHBOARDS
    ]


def _boards():
    for path in sorted((dashboards.ROOT / "dashboards").glob("*.json")):
        yield path.name, json.loads(path.read_text())


def test_four_dashboards_with_unique_uids_and_titles():
    boards = dict(_boards())
    assert len(boards) == 4
    assert len({b["uid"] for b in boards.values()}) == 4
    assert len({b["title"] for b in boards.values()}) == 4
    for name, board in boards.items():
        assert name == f"{board['uid']}.json"


@pytest.mark.parametrize("name,board", list(_boards()))
def test_panels_are_well_formed(name, board):
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(i > 0 for i in ids), name
    cells = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, (name, p["title"])
        for dx in range(pos["w"]):  # no two panels overlap
            for dy in range(pos["h"]):
                cell = (pos["x"] + dx, pos["y"] + dy)
                assert cell not in cells, (name, p["title"])
                cells.add(cell)
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        if p["type"] != "row":
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", p["title"]
                assert t["expr"].strip(), p["title"]
    refs = [[t["refId"] for t in p.get("targets", [])] for p in panels]
    assert all(len(r) == len(set(r)) for r in refs)


@pytest.mark.parametrize("name,board", list(_boards()))
def test_datasource_variable_exists(name, board):
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}"
    used = {n for n in ("model", "metric") if f"${n}" in json.dumps(board["panels"])}
    assert used <= set(variables), name


def test_provisioning_points_at_the_dashboards():
    provider = (dashboards.ROOT / "provisioning" / "dashboards" / "riverstream.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider
    datasource = (dashboards.ROOT / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "type: prometheus" in datasource


@pytest.mark.parametrize("name,board", list(_boards()))
def test_the_model_variable_offers_every_series_filtered_by_model(name, board):
    """A graph's served metric, its shadows' (``GRAPH@BRANCH``) and a comparison's champion
    are filtered by ``$model`` too: the variable must list their models, not only the learned
    ones (``riverstream_progressive_metric``)."""
    variables = {v["name"]: v for v in board["templating"]["list"]}
    if "model" not in variables:
        return
    query = variables["model"]["query"]
    query = query["query"] if isinstance(query, dict) else query
    matched = re.fullmatch(r'label_values\(\{__name__=~"([^"]+)"\}, model\)', query)
    assert matched is not None
    offered = set(matched[1].split("|"))
    filtered = {
        metric
        for p in board["panels"]
        for t in p.get("targets", [])
        for metric in re.findall(r'(riverstream_\w+)\{[^}]*model=~"\$model"', t["expr"])
    }
    assert filtered, name
    assert filtered <= offered, sorted(filtered - offered)
    assert {"riverstream_served_metric", "riverstream_comparison_labels"} <= offered
