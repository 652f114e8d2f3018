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

from isoperf.queries import DURING_ISOLATION
from services.alerts.rules import AlertRules

DATASOURCE = {"type": "influxdb", "uid": "isoperf-influxdb"}
BOARDS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
SESSION = """"theatre" = '$theatre' AND "session" = '$session'"""
_RULES = AlertRules()  # the protocol's levels; a session's own (meta thresholds) drive its alarms
LEVEL_COLOURS = {"advisory": "#2E86C1", "warning": "#F39C12", "critical": "#E74C3C", "stop": "#7B241C"}
LEVELS = tuple((float(getattr(_RULES, name)), colour) for name, colour in LEVEL_COLOURS.items())
LEVEL_NAMES = ", ".join(f"{name} {getattr(_RULES, name):g}" for name in LEVEL_COLOURS)
STALE_S = 15  # a "now" figure older than this is not shown: the state and the data age are
FRESH = f"time > now() - {STALE_S}s"
RELEASED = "after release (not a leak)"
# Units as Grafana names them; custom ones as "suffix:...".
UNITS = {
    "percent": "percent",
    "rate": "suffix:%/min",
    "counts": "suffix:counts",
    "flow": "flowmlpm",
    "pressure": "suffix:mmHg",
    "temperature": "celsius",
    "reservoir": "mlitre",
    "concentration": "suffix:µg/mL",
    "auc": "suffix:µg·min/mL",
    "age": "dateTimeFromNow",
}
NEUTRAL = {"mode": "absolute", "steps": [{"color": "text", "value": None}]}

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


def _signal(signal: str, title: str) -> Panel:
    q = (
        f"""SELECT mean("value") FROM "reading" WHERE {SESSION} AND "signal" = '{signal}' AND $timeFilter """
        "GROUP BY time($__interval) fill(none)"
    )
    return _panel("timeseries", title, [_target(q, alias=signal)], UNITS[signal])


def _level_steps() -> dict[str, Any]:
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in LEVELS]
    return {"mode": "absolute", "steps": steps}


def _leakage() -> Panel:
    """Leakage during isolation with its band; the rise after release apart, in grey."""
    group = "GROUP BY time($__interval) fill(none)"
    during = (
        'SELECT mean("percent") AS "leakage", mean("ci_low") AS "95% low", mean("ci_high") AS "95% high" '
        f'FROM "leakage" WHERE {SESSION} AND {DURING_ISOLATION} AND $timeFilter {group}'
    )
    released = (
        f'SELECT mean("percent") AS "{RELEASED}" FROM "leakage" '
        f"WHERE {SESSION} AND \"state\" = 'released' AND $timeFilter {group}"
    )
    band = [
        {
            "matcher": {"id": "byName", "options": "95% high"},
            "properties": [{"id": "custom.fillBelowTo", "value": "95% low"}, {"id": "custom.lineWidth", "value": 0}],
        },
        {"matcher": {"id": "byName", "options": "95% low"}, "properties": [{"id": "custom.lineWidth", "value": 0}]},
        {
            "matcher": {"id": "byName", "options": RELEASED},
            "properties": [
                {"id": "color", "value": {"mode": "fixed", "fixedColor": "#999999"}},
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            ],
        },
    ]
    return _panel(
        "timeseries",
        f"Leakage, % (band: 95 % interval; lines: {LEVEL_NAMES}; grey: {RELEASED})",
        [_target(during, alias="$col"), _target(released, "B", alias="$col")],
        UNITS["percent"],
        description=(
            "An alarm fires when the lower bound of the 95 % interval is above a level and resolves when the "
            "upper bound is back below it. After the clamps come off the tracer left in the organ reaches the "
            "body: the grey curve, expected, not a leak, and never alarmed on."
        ),
        defaults={"thresholds": _level_steps(), "custom": {"thresholdsStyle": {"mode": "line"}}},
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
        "Melphalan, µg/mL: predicted (band: 95 %) and measured (points)",
        [_target(predicted, alias="$col"), _target(measured, "B", alias="measured, $tag_site")],
        UNITS["concentration"],
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
    band = [
        {
            "matcher": {"id": "byName", "options": "release 95% high"},
            "properties": [
                {"id": "custom.fillBelowTo", "value": "release 95% low"},
                {"id": "custom.lineWidth", "value": 0},
            ],
        },
        {
            "matcher": {"id": "byName", "options": "release 95% low"},
            "properties": [{"id": "custom.lineWidth", "value": 0}],
        },
        {
            "matcher": {"id": "byFrameRefID", "options": "B"},
            "properties": [{"id": "custom.drawStyle", "value": "points"}, {"id": "custom.pointSize", "value": 8}],
        },
    ]
    return _panel(
        "timeseries",
        "Systemic melphalan after the release, µg/mL: predicted (band: 95 %; projected until the clamps come off) "
        "and measured (points)",
        [_target(predicted, alias="$col"), _target(measured, "B", alias="measured, systemic")],
        UNITS["concentration"],
        overrides=band,
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
            # Sessions that started in the dashboard's time range (the tag read back as a column):
            # a theatre's whole history is not offered, and the list follows the range.
            var(
                "session",
                """SELECT "session", "label" FROM "event" WHERE "theatre" = '$theatre' """
                """AND "type" = 'session_start' AND $timeFilter""",
            )
        )
    return out


def _stat(
    title: str, query: str, unit: str, decimals: int = 2, thresholds: dict[str, Any] | None = None, **extra: Any
) -> Panel:
    return _panel(
        "stat",
        title,
        [_target(query)],
        unit,
        defaults={"decimals": decimals, "thresholds": thresholds or NEUTRAL, **extra.pop("defaults", {})},
        options={"reduceOptions": {"calcs": ["lastNotNull"], **extra.pop("reduce", {})}, "colorMode": "background"},
        **extra,
    )


def _age(title: str, query: str) -> Panel:
    """When the last point came, as "x seconds ago": the time column, not a value."""
    return _stat(title, query, UNITS["age"], reduce={"fields": "/^Time$/"})


def _table(title: str, query: str, **extra: Any) -> Panel:
    return _panel("table", title, [_target(query, fmt="table")], "none", **extra)


def _link(title: str, uid: str, query: str) -> dict[str, Any]:
    return {"title": title, "url": f"/d/{uid}/{uid.removeprefix('isoperf-')}?{query}", "targetBlank": False}


def _board_link(title: str, uid: str) -> dict[str, Any]:
    """A dashboard link carrying the variables (theatre, session) and the time range shown."""
    return {
        "type": "link",
        "title": title,
        "url": f"/d/{uid}/{uid.removeprefix('isoperf-')}",
        "includeVars": True,
        "keepTime": True,
        "targetBlank": False,
        "icon": "dashboard",
        "tags": [],
        "asDropdown": False,
        "tooltip": "",
    }


def _alarm_panels(where: str) -> list[tuple[Panel, int, int]]:
    """For remote staff: what is firing now, and who acknowledged what, when."""
    firing = _table(
        "Alarms firing",
        'SELECT "status", "message", "id" FROM '
        '(SELECT last("status") AS "status", last("message") AS "message", last("id") AS "id" '
        f'FROM "alert" WHERE {where} AND $timeFilter GROUP BY "theatre", "session", "rule", "severity") '
        'WHERE "status" = \'firing\' GROUP BY "theatre", "session", "rule", "severity"',
    )
    acks = _table(
        "Alarms acknowledged: by whom, when",
        f'SELECT "id", "acknowledged_by" FROM "alert_ack" WHERE {where} AND $timeFilter GROUP BY "theatre", "session"',
    )
    return [(firing, 14, 8), (acks, 10, 8)]


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
    now = f'FROM "leakage" WHERE {SESSION} AND {DURING_ISOLATION} AND $timeFilter AND {FRESH}'
    rate_steps = {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}, {"color": "#F39C12", "value": _RULES.leak_rate_pct_min}],
    }
    to_review = "var-theatre=${__data.fields.theatre}&var-session=${__data.fields.session}&from=${__value.time}&to=now"
    session_row = _table(
        "Session: open the review from its start",
        f"""SELECT "theatre", "session", "label" FROM "event" WHERE {SESSION} AND "type" = 'session_start' """
        "AND $timeFilter",
        defaults={"links": [_link("Session review from the session's start", "isoperf-session-review", to_review)]},
    )
    panels = _layout(
        [
            [
                (_leakage(), 16, 10),
                (
                    _stat(
                        f"Leakage now, % (none when older than {STALE_S} s)",
                        f'SELECT last("percent") {now}',
                        UNITS["percent"],
                        thresholds=_level_steps(),
                    ),
                    4,
                    10,
                ),
                (
                    _stat(
                        "Leak rate now, %/min",
                        f'SELECT last("rate_pct_min") {now}',
                        UNITS["rate"],
                        thresholds=rate_steps,
                    ),
                    4,
                    10,
                ),
            ],
            [
                (
                    _stat(
                        "Leakage state (probe fault)",
                        f'SELECT "state", "probe_fault" FROM "leakage" WHERE {SESSION} AND $timeFilter '
                        "ORDER BY time DESC LIMIT 1",
                        "none",
                        reduce={"fields": "/.*/"},
                    ),
                    8,
                    4,
                ),
                (
                    _age(
                        "Last probe reading",
                        f"""SELECT last("value") FROM "reading" WHERE {SESSION} AND "signal" = 'counts' """
                        "AND $timeFilter",
                    ),
                    8,
                    4,
                ),
                (session_row, 8, 4),
            ],
            [
                (
                    _panel(
                        "timeseries",
                        "Leak rate, %/min",
                        [
                            _target(
                                f'SELECT mean("rate_pct_min") FROM "leakage" WHERE {SESSION} AND {DURING_ISOLATION} '
                                "AND $timeFilter GROUP BY time($__interval) fill(none)",
                                alias="rate",
                            )
                        ],
                        UNITS["rate"],
                    ),
                    12,
                    7,
                ),
                (_signal("counts", "Probe counts per interval"), 12, 7),
            ],
            [
                (_signal("flow", "Pump flow, mL/min"), 12, 7),
                (_signal("pressure", "Circuit pressure, mmHg"), 12, 7),
            ],
            [
                (_signal("temperature", "Perfusate temperature, °C"), 12, 7),
                (_signal("reservoir", "Reservoir level, mL"), 12, 7),
            ],
            [(_melphalan(), 24, 9)],
            [(_release(), 24, 8)],
            _alarm_panels(SESSION),
        ]
    )
    board = _dashboard(
        "isoperf-theatre-live",
        "isoperf: theatre live",
        panels,
        refresh="5s",
        time_from="now-2h",
        variables=_variables(),
        annotations=_annotations(),
    )
    board["links"] = [
        _board_link("Overview", "isoperf-overview"),
        _board_link("Session review", "isoperf-session-review"),
    ]
    return board


def session_review() -> dict[str, Any]:
    w = f"WHERE {SESSION} AND $timeFilter"
    panels = _layout(
        [
            [
                (
                    _stat(
                        "Peak leakage during isolation, %",
                        f'SELECT max("percent") FROM "leakage" {w} AND {DURING_ISOLATION}',
                        UNITS["percent"],
                        thresholds=_level_steps(),
                    ),
                    4,
                    4,
                ),
                (
                    _stat(
                        f"Peak {RELEASED}, %",
                        f"""SELECT max("percent") FROM "leakage" {w} AND "state" = 'released'""",
                        UNITS["percent"],
                    ),
                    4,
                    4,
                ),
                (_stat("Regional AUC", f'SELECT last("auc_circuit") FROM "pk" {w}', UNITS["auc"], 0), 4, 4),
                (_stat("Systemic AUC", f'SELECT last("auc_systemic") FROM "pk" {w}', UNITS["auc"]), 4, 4),
                (_stat("Regional/systemic AUC ratio", f'SELECT last("auc_ratio") FROM "pk" {w}', "none", 0), 4, 4),
                (
                    _stat("Regional peak", f'SELECT last("cmax_circuit") FROM "pk" {w}', UNITS["concentration"], 1),
                    2,
                    4,
                ),
                (
                    _stat(
                        "Alarms raised",
                        f"""SELECT count("message") FROM "alert" {w} AND "kind" = 'new'""",
                        "none",
                        0,
                    ),
                    2,
                    4,
                ),
            ],
            [(_leakage(), 24, 9)],
            [(_signal("counts", "Probe counts per interval"), 12, 7), (_melphalan(), 12, 7)],
            [
                (_signal("flow", "Pump flow, mL/min"), 12, 7),
                (_signal("pressure", "Circuit pressure, mmHg"), 12, 7),
            ],
            [
                (_signal("temperature", "Perfusate temperature, °C"), 12, 7),
                (_signal("reservoir", "Reservoir level, mL"), 12, 7),
            ],
            [
                (_table("Events", f'SELECT "label", "type" FROM "event" {w}'), 12, 8),
                (
                    _table("Lab samples, µg/mL", f'SELECT "site", "melphalan_ug_ml", "sample_id" FROM "sample" {w}'),
                    12,
                    8,
                ),
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
    board = _dashboard(
        "isoperf-session-review",
        "isoperf: session review",
        panels,
        refresh="",
        time_from="now-24h",
        variables=_variables(),
        annotations=_annotations(),
    )
    board["links"] = [_board_link("Overview", "isoperf-overview"), _board_link("Theatre live", "isoperf-theatre-live")]
    return board


def overview() -> dict[str, Any]:
    recent = "WHERE $timeFilter"
    to_live = "var-theatre=${__data.fields.theatre}&var-session=${__data.fields.session}&from=now-2h&to=now"
    age = {"matcher": {"id": "byName", "options": "Time"}, "properties": [{"id": "unit", "value": UNITS["age"]}]}
    panels = _layout(
        [
            [
                (
                    _table(
                        "Sessions: current leakage and state (open: theatre live)",
                        'SELECT last("percent") AS "leakage %", last("state") AS "state" '
                        f'FROM "leakage" {recent} GROUP BY "theatre", "session"',
                        defaults={"links": [_link("Theatre live", "isoperf-theatre-live", to_live)]},
                    ),
                    24,
                    8,
                )
            ],
            _alarm_panels("time > 0"),
            [
                (
                    _table(
                        "Theatres: age of the last reading per signal",
                        f'SELECT last("value") AS "last value" FROM "reading" {recent} GROUP BY "theatre", "signal"',
                        overrides=[age],
                    ),
                    12,
                    8,
                ),
                (
                    _table(
                        "Services online (latest status of each instance)",
                        'SELECT "status" FROM (SELECT last("status") AS "status" FROM "service_status" '
                        'GROUP BY "service", "instance") WHERE "status" = \'online\' GROUP BY "service", "instance"',
                        overrides=[age],
                    ),
                    12,
                    8,
                ),
            ],
        ]
    )
    board = _dashboard(
        "isoperf-overview", "isoperf: overview", panels, refresh="10s", time_from="now-12h", variables=[]
    )
    board["links"] = [_board_link("Theatre live", "isoperf-theatre-live")]
    return board


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
