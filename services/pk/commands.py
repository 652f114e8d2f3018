"""``isoperf sample`` and ``isoperf import-samples``: lab results from the command line.

A CSV is read as a laboratory exports it, with a header row naming the columns
``draw_time`` (ISO 8601, or Unix seconds), ``site`` (``circuit``/``systemic``),
``melphalan_ug_ml`` and optionally ``sample_id``. Every row is checked before
anything is sent: one bad row and nothing is imported, and every bad row is named.
Draw times without a time zone are read in ``--tz`` (default UTC).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from isoperf.codec import encode
from isoperf.schemas import LabSample
from isoperf.settings import ServiceSettings
from isoperf.sources.mqtt import tool_client
from isoperf.topics import Topics, check_id

COLUMNS = ("draw_time", "site", "melphalan_ug_ml", "sample_id")


class SampleFileError(ValueError):
    """Rows that cannot be read; ``errors`` names each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def parse_time(text: str, tz: ZoneInfo) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    when = datetime.fromisoformat(text)  # Python 3.11 reads "Z" too
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when.timestamp()


def _sample(row: dict[str, str], tz: ZoneInfo) -> LabSample:
    try:
        t = parse_time(row["draw_time"], tz)
    except ValueError as exc:
        raise ValueError(f"draw_time {row['draw_time']!r} is not ISO 8601 or Unix seconds ({exc})") from None
    try:
        conc = float(row["melphalan_ug_ml"])
    except ValueError:
        raise ValueError(f"melphalan_ug_ml {row['melphalan_ug_ml']!r} is not a number") from None
    try:
        sample_id = (row.get("sample_id") or "").strip() or None
        return LabSample.model_validate(
            {"t": t, "site": row["site"].strip(), "melphalan_ug_ml": conc, "sample_id": sample_id}
        )
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None


def read_csv(lines: Iterable[str], tz: ZoneInfo) -> list[LabSample]:
    """Every sample of a CSV export, or ``SampleFileError`` naming every row that cannot be read."""
    reader = csv.DictReader(lines)
    missing = [c for c in COLUMNS[:3] if c not in (reader.fieldnames or [])]
    if missing:
        raise SampleFileError(
            [f"row 1 (header): missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}"]
        )
    out: list[LabSample] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for row in reader:
        n = reader.line_num
        if None in row or any(v is None for v in row.values()):
            errors.append(f"row {n}: expected {len(reader.fieldnames or [])} columns")
            continue
        try:
            sample = _sample(row, tz)
        except ValueError as exc:
            errors.append(f"row {n}: {exc}")
            continue
        if sample.sample_id is not None and sample.sample_id in seen:
            errors.append(f"row {n}: sample_id {sample.sample_id!r} already on row {seen[sample.sample_id]}")
            continue
        if sample.sample_id is not None:
            seen[sample.sample_id] = n
        out.append(sample)
    if errors:
        raise SampleFileError(errors)
    if not out:
        raise SampleFileError(["the file holds no samples"])
    return out


async def publish_samples(settings: ServiceSettings, theatre: str, session: str, samples: list[LabSample]) -> None:
    topic = Topics(settings.mqtt_root).session(theatre, session, "sample")
    async with tool_client(settings) as client:
        for s in samples:
            await client.publish(topic, encode(s), qos=1)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {name!r}") from None


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ap = commands.add_parser(
        "import-samples",
        help="send a laboratory's CSV of results, all or nothing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("theatre")
    ap.add_argument("session")
    ap.add_argument("csv", type=Path)
    ap.add_argument(
        "--tz", type=_zone, default=ZoneInfo("UTC"), help="zone of draw times given without one (default UTC)"
    )
    ap.set_defaults(run=_import_samples)
    one = commands.add_parser("sample", help="send one lab result", description="Send one lab result.")
    one.add_argument("theatre")
    one.add_argument("session")
    one.add_argument("--drawn", required=True, help="draw time, ISO 8601 or Unix seconds")
    one.add_argument("--site", required=True, choices=["circuit", "systemic"])
    one.add_argument("--ug-ml", required=True, help="melphalan concentration, ug/mL")
    one.add_argument("--id", default="", help="sample id (a result for an id already given corrects it)")
    one.add_argument("--tz", type=_zone, default=ZoneInfo("UTC"))
    one.set_defaults(run=lambda args: _send_sample(one, args))


def _import_samples(args: argparse.Namespace) -> int:
    theatre, session = check_id(args.theatre, "theatre"), check_id(args.session, "session")
    try:
        with args.csv.open(newline="", encoding="utf-8-sig") as f:
            samples = read_csv(f, args.tz)
    except SampleFileError as exc:
        print(f"{args.csv}: nothing imported:", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{args.csv}: {exc.strerror}", file=sys.stderr)
        return 2
    asyncio.run(publish_samples(ServiceSettings(), theatre, session, samples))
    print(f"{len(samples)} samples of {theatre}/{session} sent.")
    return 0


def _send_sample(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    theatre, session = check_id(args.theatre, "theatre"), check_id(args.session, "session")
    row = {"draw_time": args.drawn, "site": args.site, "melphalan_ug_ml": args.ug_ml, "sample_id": args.id}
    try:
        sample = _sample(row, args.tz)
    except ValueError as exc:
        ap.error(str(exc))
    asyncio.run(publish_samples(ServiceSettings(), theatre, session, [sample]))
    print(f"Sample {sample.sample_id or ''} ({sample.site}, {sample.melphalan_ug_ml:g} ug/mL) sent.")
    return 0
