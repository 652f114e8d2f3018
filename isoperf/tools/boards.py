"""The Grafana boards, built here and kept as files under ``deploy/grafana/`` (provisioned from
there; ``isoperf boards write`` regenerates them and a test checks they are current).

Every panel reads InfluxDB through InfluxQL on the provisioned data source
``isoperf-influxdb``; ``$theatre`` and ``$session`` are dashboard variables.

* Theatre live (``isoperf-theatre-live``): leakage with its 95 % band and the alert levels,
  leak rate, probe counts, pump flow, circuit pressure, temperature, reservoir, predicted and
  measured melphalan, the predicted systemic melphalan after the release; events and alerts as
  annotations.
* Session review (``isoperf-session-review``): one stored session, start to end: summary
  figures, the same curves, tables of events, samples, alerts and acknowledgements.
* Overview (``isoperf-overview``): every active theatre at a glance.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "influxdb", "uid": "isoperf-influxdb"}
BOARDS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
SESSION = """"theatre" = '$theatre' AND "session" = '$session'"""
LEVELS = ((1.0, "#2E86C1"), (2.0, "#F39C12"), (5.0, "#E74C3C"), (10.0, "#7B241C"))

Panel = dict[str, Any]


def _target(query: str, ref: str = "A", fmt: str = "time_series", alias: str | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"refId": ref, "datasource": DATASOURCE, "rawQuery": True, "query": query, "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    return t


def _panel(kind: str, title: str, targets: list[dict[str, Any]], unit: str = "none", **extra: Any) -> Panel:
    return {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, **extra.pop("defaults", {})},
            "overrides": extra.pop("overrides", []),
        },
        "options": extra.pop("options", {}),
        **extra,
    }


def _signal(signal: str, title: str, unit: str) -> Panel:
    q = (
        f"""SELECT mean("value") FROM "reading" WHERE {SESSION} AND "signal" = '{signal}' AND $timeFilter """
        "GROUP BY time($__interval) fill(none)"
    )
    return _panel("timeseries", title, [_target(q, alias=title)], unit)


def _leakage() -> Panel:
    q = (
        'SELECT mean("percent") AS "leakage", mean("ci_low") AS "95% low", mean("ci_high") AS "95% high" '
        f'FROM "leakage" WHERE {SESSION} AND $timeFilter GROUP BY time($__interval) fill(none)'
    )
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in LEVELS]
    band = [
        {
            "matcher": {"id": "byName", "options": "95% high"},
            "properties": [{"id": "custom.fillBelowTo", "value": "95% low"}, {"id": "custom.lineWidth", "value": 0}],
        },
        {"matcher": {"id": "byName", "options": "95% low"}, "properties": [{"id": "custom.lineWidth", "value": 0}]},
    ]
    return _panel(
        "timeseries",
        "Leakage, % (95 % interval; lines: advisory 1, warning 2, critical 5, stop 10)",
        [_target(q)],
        "percent",
        defaults={"thresholds": {"mode": "absolute", "steps": steps}, "custom": {"thresholdsStyle": {"mode": "line"}}},
        overrides=band,
    )


def _melphalan() -> Panel:
    predicted = (
        'SELECT mean("circuit_ug_ml") AS "circuit, predicted", mean("circuit_low_ug_ml") AS "95% low", '
        'mean("circuit_high_ug_ml") AS "95% high", mean("systemic_ug_ml") AS "systemic, from the leak" '
        f'FROM "pk" WHERE {SESSION} AND $timeFilter GROUP BY time($__interval) fill(none)'
    )
    measured = f"""SELECT "melphalan_ug_ml" FROM "sample" WHERE {SESSION} AND $timeFilter GROUP BY "site\""""
    band = [
        {
            "matcher": {"id": "byName", "options": "95% high"},
            "properties": [{"id": "custom.fillBelowTo", "value": "95% low"}],
        },
        {
            "matcher": {"id": "byFrameRefID", "options": "B"},
            "properties": [{"id": "custom.drawStyle", "value": "points"}, {"id": "custom.pointSize", "value": 8}],
        },
    ]
    return _panel(
        "timeseries",
        "Melphalan, ug/mL: predicted (band: 95 %) and measured (points)",
        [_target(predicted), _target(measured, "B", alias="measured, $tag_site")],
        "none",
        overrides=band,
    )


def _release() -> Panel:
    """The pk service's latest prediction of the systemic curve after the release (``pk_release``: one
    point per 30 s, replaced by every new prediction), with the systemic samples."""
    predicted = (
        'SELECT "ug_ml" AS "after release, predicted", "low_ug_ml" AS "release 95% low", '
        f'"high_ug_ml" AS "release 95% high" FROM "pk_release" WHERE {SESSION} AND $timeFilter'
    )
    measured = f"""SELECT "melphalan_ug_ml" FROM "sample" WHERE {SESSION} AND "site" = 'systemic' AND $timeFilter"""
    overrides = [
        {
            "matcher": {"id": "byName", "options": "release 95% high"},
            "properties": [{"id": "custom.fillBelowTo", "value": "release 95% low"}],
        },
        {
            "matcher": {"id": "byFrameRefID", "options": "B"},
            "properties": [{"id": "custom.drawStyle", "value": "points"}, {"id": "custom.pointSize", "value": 8}],
        },
    ]
    return _panel(
        "timeseries",
        "Systemic melphalan after the release, ug/mL: predicted (band: 95 %; projected until the clamps come off) "
        "and measured (points)",
        [_target(predicted), _target(measured, "B", alias="measured, systemic")],
        "none",
        overrides=overrides,
    )


def _annotations() -> list[dict[str, Any]]:
    return [
        {
            "name": "Events",
            "datasource": DATASOURCE,
            "enable": True,
            "iconColor": "#8E44AD",
            "query": f"""SELECT "label" FROM "event" WHERE {SESSION} AND $timeFilter""",
            "textColumn": "label",
            "tagsColumn": "type",
        },
        {
            "name": "Alerts",
            "datasource": DATASOURCE,
            "enable": True,
            "iconColor": "#E74C3C",
            "query": f"""SELECT "message", "kind" FROM "alert" WHERE {SESSION} AND $timeFilter""",
            "textColumn": "message",
            "tagsColumn": "rule,severity,kind",
        },
    ]


def _variables(with_session: bool = True) -> list[dict[str, Any]]:
    def var(name: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": name.capitalize(),
            "type": "query",
            "datasource": DATASOURCE,
            "query": query,
            "definition": query,
            "refresh": 2,
            "sort": 1 if name == "theatre" else 2,
            "includeAll": False,
            "multi": False,
        }

    out = [var("theatre", 'SHOW TAG VALUES FROM "session" WITH KEY = "theatre"')]
    if with_session:
        out.append(
            var("session", """SHOW TAG VALUES FROM "session" WITH KEY = "session" WHERE "theatre" = '$theatre'""")
        )
    return out


def _stat(title: str, query: str, unit: str = "none", decimals: int = 2) -> Panel:
    return _panel(
        "stat",
        title,
        [_target(query)],
        unit,
        defaults={"decimals": decimals},
        options={"reduceOptions": {"calcs": ["lastNotNull"]}},
    )


def _table(title: str, query: str) -> Panel:
    return _panel("table", title, [_target(query, fmt="table")])


def _layout(rows: list[list[tuple[Panel, int, int]]]) -> list[Panel]:
    """Place panels row by row: each ``(panel, width, height)``; ids in order from 1."""
    out, y, pid = [], 0, 1
    for row in rows:
        x, height = 0, 0
        for panel, w, h in row:
            out.append({"id": pid, "gridPos": {"x": x, "y": y, "w": w, "h": h}, **panel})
            pid, x, height = pid + 1, x + w, max(height, h)
        y += height
    return out


def _dashboard(
    uid: str,
    title: str,
    panels: list[Panel],
    *,
    refresh: str,
    time_from: str,
    variables: list[dict[str, Any]],
    annotations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["isoperf"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": annotations or []},
        "panels": panels,
    }


def theatre_live() -> dict[str, Any]:
    now = f'FROM "leakage" WHERE {SESSION} AND $timeFilter'
    panels = _layout(
        [
            [
                (_leakage(), 16, 10),
                (_stat("Leakage now, %", f'SELECT last("percent") {now}', "percent"), 4, 10),
                (_stat("Leak rate now, %/min", f'SELECT last("rate_pct_min") {now}'), 4, 10),
            ],
            [
                (
                    _panel(
                        "timeseries",
                        "Leak rate, %/min",
                        [
                            _target(
                                f'SELECT mean("rate_pct_min") {now} GROUP BY time($__interval) fill(none)', alias="rate"
                            )
                        ],
                    ),
                    12,
                    7,
                ),
                (_signal("counts", "Probe counts per interval", "none"), 12, 7),
            ],
            [
                (_signal("flow", "Pump flow, mL/min", "none"), 12, 7),
                (_signal("pressure", "Circuit pressure, mmHg", "none"), 12, 7),  # no mmHg unit in Grafana,
            ],
            [
                (_signal("temperature", "Perfusate temperature", "celsius"), 12, 7),
                (_signal("reservoir", "Reservoir level, mL", "none"), 12, 7),
            ],
            [(_melphalan(), 24, 9)],
            [(_release(), 24, 8)],
        ]
    )
    return _dashboard(
        "isoperf-theatre-live",
        "isoperf: theatre live",
        panels,
        refresh="5s",
        time_from="now-2h",
        variables=_variables(),
        annotations=_annotations(),
    )


def session_review() -> dict[str, Any]:
    w = f"WHERE {SESSION}"
    panels = _layout(
        [
            [
                (_stat("Peak leakage, %", f'SELECT max("percent") FROM "leakage" {w}', "percent"), 4, 4),
                (_stat("Regional AUC, ug*min/mL", f'SELECT last("auc_circuit") FROM "pk" {w}', decimals=0), 4, 4),
                (_stat("Systemic AUC, ug*min/mL", f'SELECT last("auc_systemic") FROM "pk" {w}'), 4, 4),
                (_stat("Regional/systemic AUC ratio", f'SELECT last("auc_ratio") FROM "pk" {w}', decimals=0), 4, 4),
                (_stat("Regional peak, ug/mL", f'SELECT last("cmax_circuit") FROM "pk" {w}', decimals=1), 4, 4),
                (
                    _stat(
                        "Alarms raised", f"""SELECT count("message") FROM "alert" {w} AND "kind" = 'new'""", decimals=0
                    ),
                    4,
                    4,
                ),
            ],
            [(_leakage(), 24, 9)],
            [(_signal("counts", "Probe counts per interval", "none"), 12, 7), (_melphalan(), 12, 7)],
            [
                (_signal("flow", "Pump flow, mL/min", "none"), 12, 7),
                (_signal("pressure", "Circuit pressure, mmHg", "none"), 12, 7),
            ],
            [
                (_table("Events", f'SELECT "label", "type" FROM "event" {w}'), 12, 8),
                (_table("Lab samples", f'SELECT "site", "melphalan_ug_ml", "sample_id" FROM "sample" {w}'), 12, 8),
            ],
            [
                (
                    _table("Alerts", f'SELECT "rule", "severity", "kind", "status", "message", "id" FROM "alert" {w}'),
                    16,
                    8,
                ),
                (_table("Acknowledgements", f'SELECT "id", "acknowledged_by" FROM "alert_ack" {w}'), 8, 8),
            ],
            [(_release(), 24, 8)],
        ]
    )
    return _dashboard(
        "isoperf-session-review",
        "isoperf: session review",
        panels,
        refresh="",
        time_from="now-6h",
        variables=_variables(),
        annotations=_annotations(),
    )


def overview() -> dict[str, Any]:
    recent = "WHERE $timeFilter"
    panels = _layout(
        [
            [
                (
                    _table(
                        "Sessions: current leakage and state",
                        'SELECT last("percent") AS "leakage %", last("state") AS "state" '
                        f'FROM "leakage" {recent} GROUP BY "theatre", "session"',
                    ),
                    24,
                    8,
                )
            ],
            [
                (
                    _table(
                        "Alerts firing",
                        'SELECT "status", "rule", "severity", "message" FROM '
                        '(SELECT last("status") AS "status", last("message") AS "message" '
                        f'FROM "alert" {recent} GROUP BY "theatre", "session", "rule", "severity") '
                        'WHERE "status" = \'firing\' GROUP BY "theatre", "session"',
                    ),
                    24,
                    8,
                )
            ],
            [
                (
                    _table(
                        "Devices: last reading per signal",
                        f'SELECT last("value") AS "last value" FROM "reading" {recent} GROUP BY "theatre", "signal"',
                    ),
                    12,
                    8,
                ),
                (
                    _table(
                        "Services (latest status)",
                        'SELECT last("status") AS "status" FROM "service_status" GROUP BY "service", "instance"',
                    ),
                    12,
                    8,
                ),
            ],
        ]
    )
    return _dashboard("isoperf-overview", "isoperf: overview", panels, refresh="10s", time_from="now-12h", variables=[])


BOARDS = {"theatre-live": theatre_live, "session-review": session_review, "overview": overview}


def write(directory: Path = BOARDS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, build in BOARDS.items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(build(), indent=2) + "\n")
        out.append(path)
    return out


def datasource(influx_url: str, database: str, user: str | None, password: str | None) -> dict[str, Any]:
    """The InfluxQL data source the boards read (the same as deploy/grafana/provisioning)."""
    ds: dict[str, Any] = {
        "name": "isoperf InfluxDB",
        "uid": DATASOURCE["uid"],
        "type": "influxdb",
        "access": "proxy",
        "url": influx_url,
        "jsonData": {"dbName": database, "httpMode": "GET", "version": "InfluxQL"},
        "isDefault": False,
    }
    if user:
        ds["user"] = user
        ds["secureJsonData"] = {"password": password or ""}
    return ds


def install(grafana_url: str, token: str | None, ds: dict[str, Any], folder: str = "isoperf") -> list[str]:
    """Create or update the data source, a folder and the boards in an existing Grafana."""
    from grafana_client.api import GrafanaApi
    from grafana_client.client import GrafanaClientError

    api = GrafanaApi.from_url(grafana_url, credential=token)
    try:
        api.datasource.get_datasource_by_uid(ds["uid"])
        api.datasource.update_datasource_by_uid(ds["uid"], ds)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.datasource.create_datasource(ds)
    try:
        api.folder.get_folder(folder)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.folder.create_folder("isoperf", uid=folder)
    done = []
    for build in BOARDS.values():
        board = build()
        api.dashboard.update_dashboard(
            {"dashboard": board, "folderUid": folder, "overwrite": True, "message": "isoperf boards install"}
        )
        done.append(board["uid"])
    return done


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ap = commands.add_parser(
        "boards",
        help="write the Grafana boards, or install them into a Grafana",
        description="The Grafana boards: write the files, or install them into a Grafana.",
    )
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("write", help=f"regenerate the dashboard files in {BOARDS_DIR}")
    inst = sub.add_parser(
        "install", help="install the data source and boards into an existing Grafana over its HTTP API"
    )
    inst.add_argument(
        "--grafana-url",
        default=os.environ.get("GRAFANA_URL", "http://localhost:3000"),
        help="with user:password@ for basic auth",
    )
    inst.add_argument(
        "--influx-url",
        default=os.environ.get("ISOPERF_INFLUX_URL", "http://influxdb:8086"),
        help="as Grafana reaches it",
    )
    inst.add_argument("--database", default=os.environ.get("ISOPERF_INFLUX_DATABASE", "perfusion"))
    ap.set_defaults(run=_boards)


def _boards(args: argparse.Namespace) -> int:
    if args.what == "write":
        for path in write():
            print(f"wrote {path}")
        return 0
    ds = datasource(
        args.influx_url,
        args.database,
        os.environ.get("INFLUXDB_READ_USER"),
        os.environ.get("INFLUXDB_READ_USER_PASSWORD"),
    )
    for uid in install(args.grafana_url, os.environ.get("GRAFANA_TOKEN"), ds):
        print(f"installed {uid}")
    return 0
