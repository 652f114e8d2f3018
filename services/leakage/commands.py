"""``isoperf reanalyse``: recompute leakage for a stored session from its raw readings.

The result is written as a separate series, measurement ``leakage_reanalysis``
tagged ``analysis=<name>``, never over the live ``leakage`` series (the record
of what the team saw). With the live service's parameters it reproduces the
live series; ``--set`` changes any estimator parameter, e.g.
``--set zero_end_s=150 --set calibration_drift_correction=true``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from isoperf.influx import InfluxClient, InfluxWriter, line
from isoperf.lifecycle import configure_logging
from isoperf.queries import session_where
from isoperf.topics import check_id
from services.leakage.estimator import EstimatorParams, LeakageEstimator
from services.leakage.history import load_session
from services.leakage.settings import LeakageSettings

MEASUREMENT = "leakage_reanalysis"


def parse_overrides(base: EstimatorParams, items: list[str]) -> EstimatorParams:
    """``["zero_end_s=150", "calibration_drift_correction=true"]`` applied to ``base``; ``ValueError`` if unknown."""
    fields = {f.name: f for f in dataclasses.fields(base)}
    changes: dict[str, Any] = {}  # each value of its field's type, known only at run time
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}")
        current = getattr(base, name)
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"--set {item!r}: {name} is true or false")
            changes[name] = raw.lower() in ("true", "1", "yes")
        else:
            changes[name] = type(current)(raw)
    return dataclasses.replace(base, **changes)


async def reanalyse(settings: LeakageSettings, theatre: str, session: str, name: str, params: EstimatorParams) -> int:
    async with InfluxClient(settings) as influx:
        est = LeakageEstimator(params)
        n = await load_session(influx, theatre, session, est)
        if n == 0:
            print(f"no stored counts for {theatre}/{session}", file=sys.stderr)
            return 1
        points = est.update()
        writer = InfluxWriter(influx)
        tags = {"theatre": theatre, "session": session, "analysis": name}
        writer.add(line(MEASUREMENT, tags, p.model_dump(exclude={"t"}), p.t) for p in points)
        await writer.flush()
        live = await influx.rows(f"SELECT percent FROM leakage WHERE {session_where(theatre, session)}")
    live_by_t = {r["time"]: r["percent"] for r in live if r["percent"] is not None}
    diffs = [
        abs(p.percent - live_by_t[round(p.t * 1000)])
        for p in points
        if p.percent is not None and round(p.t * 1000) in live_by_t
    ]
    numbered = [p for p in points if p.percent is not None]
    print(f"{theatre}/{session}: {n} stored counts, {len(points)} points written to {MEASUREMENT} (analysis={name})")
    if numbered:
        peak = max(numbered, key=lambda p: p.percent or 0.0)
        print(f"  peak leakage {peak.percent:.2f} % (95% CI {peak.ci_low:.2f} to {peak.ci_high:.2f})")
    if diffs:
        print(f"  against the live series: {len(diffs)} points compared, largest difference {max(diffs):.3g} pp")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ap = commands.add_parser(
        "reanalyse",
        help="recompute leakage for a stored session as a separate series",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("theatre")
    ap.add_argument("session")
    ap.add_argument("--name", default="reanalysis", help="the analysis tag of the new series (default: %(default)s)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="change an estimator parameter")
    ap.set_defaults(run=lambda args: _reanalyse_main(ap, args))


def _reanalyse_main(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = LeakageSettings()
    configure_logging(settings.log_level)
    try:
        check_id(args.theatre, "theatre")
        check_id(args.session, "session")
        check_id(args.name, "analysis name")
        params = parse_overrides(settings.estimator_params(), args.set)
    except ValueError as exc:
        ap.error(str(exc))
    return asyncio.run(reanalyse(settings, args.theatre, args.session, args.name, params))
