"""The Grafana boards without Grafana: structure, and the files are what the code builds."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from isoperf.tools import boards

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
BUILTIN = {"timeFilter", "__interval", "__interval_ms", "tag_site"}


def all_boards() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(boards.BOARDS_DIR.glob("*.json"))]


def queries(board: dict[str, Any]) -> list[str]:
    out = [t["query"] for p in board["panels"] for t in p["targets"]]
    out += [a["query"] for a in board["annotations"]["list"]]
    return out + [v["query"] for v in board["templating"]["list"]]


def test_the_files_are_what_the_code_builds() -> None:
    for name, build in boards.BOARDS.items():
        assert json.loads((boards.BOARDS_DIR / f"{name}.json").read_text()) == build(), (
            f"run: isoperf boards write ({name})"
        )


def test_stable_unique_uids_and_titles() -> None:
    uids = [b["uid"] for b in all_boards()]
    assert sorted(uids) == ["isoperf-overview", "isoperf-session-review", "isoperf-theatre-live"]


@pytest.mark.parametrize("board", all_boards(), ids=lambda b: b["uid"])
def test_panels_have_unique_ids_and_fit_the_grid_without_overlap(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine


@pytest.mark.parametrize("board", all_boards(), ids=lambda b: b["uid"])
def test_every_variable_is_declared_and_every_target_on_the_provisioned_source(board: dict[str, Any]) -> None:
    declared = {v["name"] for v in board["templating"]["list"]}
    for q in queries(board):
        used = set(re.findall(r"\$(\w+)", q))
        assert used <= declared | BUILTIN, f"undeclared {used - declared - BUILTIN} in {q}"
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "isoperf.yaml").read_text())["datasources"][0]
    for p in board["panels"]:
        assert p["datasource"]["uid"] == provisioned["uid"] and p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "influxdb", "uid": provisioned["uid"]} and t["rawQuery"] is True
    for a in board["annotations"]["list"]:
        assert a["datasource"]["uid"] == provisioned["uid"]


def test_live_board_shows_what_theatre_staff_need() -> None:
    live = boards.theatre_live()
    titles = " | ".join(p["title"] for p in live["panels"])
    for needed in (
        "Leakage",
        "Leak rate",
        "Probe counts",
        "Pump flow",
        "Circuit pressure",
        "temperature",
        "Reservoir",
        "Melphalan",
    ):
        assert needed in titles
    leak = live["panels"][0]
    assert [s["value"] for s in leak["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]] == [1.0, 2.0, 5.0, 10.0]
    assert {a["name"] for a in live["annotations"]["list"]} == {"Events", "Alerts"}
    assert [v["name"] for v in live["templating"]["list"]] == ["theatre", "session"]


def test_the_provider_points_where_compose_mounts_the_boards() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "isoperf.yaml").read_text())["providers"][0]
    compose = (ROOT / "docker-compose.yml").read_text()
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}" in compose
