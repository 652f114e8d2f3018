"""The boards read as Grafana resolves them, without Grafana (it cannot run here).

Grafana's InfluxQL data source names each series of a ``time_series`` target
``measurement.column`` (and `` { tag: value }`` when grouped by tags) unless the target has an
alias; an alias may use ``$m``/``$measurement``, ``$col``, ``$tag_<key>`` and ``$<n>`` (or the
``[[...]]`` forms). A ``table`` target gives one field per column. Field overrides then match
those names (``byName`` exactly, ``byRegexp`` as a regular expression, ``byFrameRefID`` the
target). See Grafana's ``pkg/tsdb/influxdb/influxql/response_parser.go`` (formatFrameName).

``problems(boards)`` lists what a theatre team would find wrong on the screen; a real InfluxDB
result can be given (``results``) to name the series from it, otherwise each query's columns and
tags are read from the query itself.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

from isoperf.tools.boards import LEVELS, STALE_S, UNITS
from services.alerts.rules import AlertRules

Series = dict[str, Any]  # an InfluxQL series: {"name", "columns", "tags"?, "values"?}
Results = Callable[[dict[str, Any]], list[Series]]

# Tag values to stand in for the real ones when the result is read from the query.
SAMPLE_TAGS = {"site": ["circuit", "systemic"]}
# What each quantity is shown in: by field, by reading signal, by InfluxQL function.
FIELD_UNITS = {
    "percent": UNITS["percent"],
    "ci_low": UNITS["percent"],
    "ci_high": UNITS["percent"],
    "rate_pct_min": UNITS["rate"],
    "circuit_ug_ml": UNITS["concentration"],
    "circuit_low_ug_ml": UNITS["concentration"],
    "circuit_high_ug_ml": UNITS["concentration"],
    "systemic_ug_ml": UNITS["concentration"],
    "melphalan_ug_ml": UNITS["concentration"],
    "ug_ml": UNITS["concentration"],  # pk_release: the predicted curve after the release and its band
    "low_ug_ml": UNITS["concentration"],
    "high_ug_ml": UNITS["concentration"],
    "cmax_circuit": UNITS["concentration"],
    "auc_circuit": UNITS["auc"],
    "auc_systemic": UNITS["auc"],
    "auc_ratio": "none",  # a ratio of like quantities
    "message": "none",  # counted: a number of alarms
    "state": "none",  # text
}
SIGNAL_UNITS = {s: UNITS[s] for s in ("counts", "flow", "pressure", "temperature", "reservoir")}
_ALIAS = re.compile(r"\[\[([@/\w-]+)\]\]|\$([@\w-]+)")
_FUNC = re.compile(r'^(\w+)\(\s*"?([\w]+)"?')


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses and quotes."""
    out, depth, cur, quote = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    return [*out, cur.strip()] if cur.strip() else out


def _outer(query: str) -> tuple[str, str]:
    """The outer query's select list and what follows its FROM (subquery blanked out)."""
    body = query.strip()[len("SELECT ") :]
    depth, i = 0, 0
    while i < len(body):
        if body[i] == "(":
            depth += 1
        elif body[i] == ")":
            depth -= 1
        elif depth == 0 and body.startswith(" FROM ", i):
            rest = body[i + 6 :]
            if rest.startswith("("):
                d, end = 0, 0
                for end, ch in enumerate(rest):  # noqa: B007 (end is used after the loop)
                    d += (ch == "(") - (ch == ")")
                    if d == 0:
                        break
                rest = "(...)" + rest[end + 1 :]
            return body[:i], rest
        i += 1
    raise ValueError(f"no FROM in {query}")


def _column(item: str) -> tuple[str, str | None]:
    """(column name as InfluxDB returns it, the field it reads)."""
    alias = re.search(r'\sAS\s+"([^"]+)"\s*$', item)
    expr = item[: alias.start()].strip() if alias else item.strip()
    func = _FUNC.match(expr)
    field = func.group(2) if func else expr.strip('"')
    name = alias.group(1) if alias else (func.group(1) if func else field)
    return name, field


def columns(query: str) -> list[tuple[str, str | None]]:
    select, _ = _outer(query)
    return [_column(item) for item in _split_top(select)]


def measurement(query: str) -> str:
    found = re.search(r'FROM\s+"(\w+)"', query)
    assert found, query
    return found.group(1)


def group_tags(query: str) -> list[str]:
    _, rest = _outer(query)
    group = re.search(r"GROUP BY (.*?)(?: fill\(| ORDER | LIMIT |$)", rest)
    if not group:
        return []
    return [g.strip().strip('"') for g in _split_top(group.group(1)) if not g.strip().startswith("time(")]


def from_query(target: dict[str, Any]) -> list[Series]:
    """The series InfluxDB returns for a query, read from the query (tag values from SAMPLE_TAGS)."""
    q = target["query"]
    raw_cols = [name for name, _ in columns(q)]
    # Raw-selected tags come back as columns too; a selected tag of a grouped query does not.
    tags = group_tags(q)
    combos = list(itertools.product(*[SAMPLE_TAGS.get(t, [f"<{t}>"]) for t in tags]))
    return [
        {"name": measurement(q), "columns": ["time", *raw_cols], "tags": dict(zip(tags, combo, strict=True))}
        for combo in combos
    ]


def display_names(target: dict[str, Any], series: list[Series]) -> list[str]:
    """The names Grafana gives the fields of this target's result."""
    names: list[str] = []
    if target.get("resultFormat") == "table":  # one table: Time, the grouping tags, the columns
        for s in series:
            for name in ["Time", *sorted((s.get("tags") or {}).keys()), *s["columns"][1:]]:
                if name not in names:
                    names.append(name)
        return names
    for s in series:
        for col in s["columns"][1:]:
            alias = target.get("alias")
            tags = s.get("tags") or {}
            if not alias:
                name = f"{s['name']}.{col}"
                if tags:
                    name += " { " + " ".join(f"{k}: {v}" for k, v in sorted(tags.items())) + " }"
                names.append(name)
                continue

            def sub(m: re.Match[str], s: Series = s, col: str = col, tags: dict[str, str] = tags) -> str:
                key = m.group(1) or m.group(2)
                if key in ("m", "measurement"):
                    return ""  # a raw query has no measurement in the target: Grafana leaves it empty
                if key == "col":
                    return col
                if key.isdigit():
                    parts = str(s["name"]).split(".")
                    return parts[int(key)] if int(key) < len(parts) else m.group(0)
                if key.startswith("tag_") and key[4:] in tags:
                    return str(tags[key[4:]])
                return m.group(0)

            names.append(_ALIAS.sub(sub, alias))
    return names


def _shown_quantity(panel: dict[str, Any]) -> str | None:
    """The field or signal a panel plots: what its unit must be."""
    q = panel["targets"][0]["query"]
    signal = re.search(r""""signal" = '(\w+)'""", q)
    if measurement(q) == "reading" and signal:
        return "signal:" + signal.group(1)
    fields = [f for _, f in columns(q) if f]
    return fields[0] if fields else None


def _matches(matcher: dict[str, Any], names: list[str], refs: set[str]) -> bool:
    kind, opt = matcher["id"], matcher.get("options")
    if kind == "byName":
        return opt in names
    if kind == "byRegexp":
        return any(re.search(str(opt), n) for n in names)
    if kind == "byFrameRefID":
        return opt in refs
    return True  # byType etc.: not name-based


def _links(board: dict[str, Any]) -> list[str]:
    urls = [link.get("url", "") for link in board.get("links", [])]
    for p in board["panels"]:
        fc = p.get("fieldConfig", {})
        urls += [link["url"] for link in fc.get("defaults", {}).get("links", [])]
        for o in fc.get("overrides", []):
            for prop in o["properties"]:
                if prop["id"] == "links":
                    urls += [link["url"] for link in prop["value"]]
    return urls


def board_problems(board: dict[str, Any], shipped: dict[str, dict[str, Any]], results: Results) -> list[str]:
    out: list[str] = []
    uid = board["uid"]
    rules = AlertRules()
    levels = [v for v, _ in LEVELS]
    live = bool(board.get("refresh"))
    has_session = any(v["name"] == "session" for v in board["templating"]["list"])
    for p in board["panels"]:
        where = f"{uid}: {p['title']}"
        names = [n for t in p["targets"] for n in display_names(t, results(t))]
        refs = {t["refId"] for t in p["targets"]}
        fc = p["fieldConfig"]
        for o in fc.get("overrides", []):
            if not _matches(o["matcher"], names, refs):
                out.append(f"{where}: override {o['matcher']} matches no series of {names}")
            out += [
                f"{where}: band fills to {prop['value']!r}, no such series in {names}"
                for prop in o["properties"]
                if prop["id"] == "custom.fillBelowTo" and prop["value"] not in names
            ]
        defaults = fc.get("defaults", {})
        if p["type"] in ("timeseries", "stat", "gauge"):
            unit = defaults.get("unit")
            fields = p.get("options", {}).get("reduceOptions", {}).get("fields", "")
            quantity = "age" if fields == "/^Time$/" else _shown_quantity(p)
            expected = (
                UNITS["age"]
                if quantity == "age"
                else SIGNAL_UNITS.get(quantity.removeprefix("signal:"))
                if quantity and quantity.startswith("signal:")
                else FIELD_UNITS.get(quantity or "")
            )
            if expected is None:
                out.append(f"{where}: no unit known for {quantity!r}")
            elif unit != expected:
                out.append(f"{where}: unit {unit!r}, expected {expected!r} for {quantity}")
        if p["type"] in ("stat", "gauge"):
            steps = defaults.get("thresholds", {}).get("steps")
            q = p["targets"][0]["query"]
            if not steps:
                out.append(f"{where}: no thresholds: Grafana's default shows green up to 80, red above")
            elif _shown_quantity(p) == "percent" and "'released'" not in q:
                got = [s["value"] for s in steps[1:]]
                if got != levels:
                    out.append(f"{where}: thresholds {got}, not the alert levels {levels}")
            elif _shown_quantity(p) == "rate_pct_min" and [s["value"] for s in steps[1:]] != [rules.leak_rate_pct_min]:
                out.append(f"{where}: thresholds not the leak-rate alarm level")
            if (
                live
                and re.search(r"\blast\(", q)
                and f"now() - {STALE_S}s" not in q
                and p["options"]["reduceOptions"].get("fields") != "/^Time$/"
            ):
                out.append(f"{where}: last() shows a stale value during a probe fault or after the data stop")
        if has_session and any("$timeFilter" not in t["query"] for t in p["targets"]):
            out.append(f"{where}: not limited to the dashboard's time range, unlike the curves beside it")
    if any(
        v["name"] == "session" and ("$timeFilter" not in v["query"] or v.get("refresh") != 2)
        for v in board["templating"]["list"]
    ):
        out.append(f"{uid}: the session variable is not limited to the time range")
    # Links: to shipped boards, carrying the variables and a time range.
    urls = _links(board)
    targets = {u: re.match(r"/d/([\w-]+)", u) for u in urls}
    out += [
        f"{uid}: link {u} leads to no shipped board" for u, m in targets.items() if not m or m.group(1) not in shipped
    ]
    linked = {m.group(1) for m in targets.values() if m}
    needed = {"isoperf-overview": {"isoperf-theatre-live"}, "isoperf-theatre-live": {"isoperf-session-review"}}
    if missing := needed.get(uid, set()) - linked:
        out.append(f"{uid}: no link to {sorted(missing)}")
    out += [
        f"{uid}: link {link['title']} does not carry the theatre, session and time range"
        for link in board.get("links", [])
        if not (link.get("includeVars") and link.get("keepTime"))
    ]
    out += [
        f"{uid}: link {u} does not carry the session and its time range"
        for u in urls
        if "${__data" in u and ("var-session=" not in u or "from=" not in u)
    ]
    # Remote staff: firing alarms and who acknowledged them.
    if uid in ("isoperf-theatre-live", "isoperf-overview"):
        queries = [t["query"] for p in board["panels"] for t in p["targets"]]
        if not any('FROM "alert_ack"' in q and "acknowledged_by" in q for q in queries) or not any(
            "'firing'" in q for q in queries
        ):
            out.append(f"{uid}: no alarm panel (firing, acknowledged, by whom) for remote staff")
    if uid == "isoperf-overview":
        for p in board["panels"]:
            q = p["targets"][0]["query"]
            ages = [
                o
                for o in p["fieldConfig"].get("overrides", [])
                if any(pr["id"] == "unit" and pr["value"] == UNITS["age"] for pr in o["properties"])
            ]
            if measurement(q) == "reading" and not ages:
                out.append(f"{uid}: {p['title']}: no age of the last reading")
            if measurement(q) == "service_status" and "'online'" not in q:
                out.append(f"{uid}: {p['title']}: dead service instances are kept forever")
    return out


def problems(shipped: dict[str, dict[str, Any]], results: Results = from_query) -> list[str]:
    return [p for board in shipped.values() for p in board_problems(board, shipped, results)]
