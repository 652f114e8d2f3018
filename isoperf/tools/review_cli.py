"""``isoperf sessions | summary | export | report``: stored sessions from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from isoperf.topics import check_id

HELP = {
    "sessions": "list the stored sessions",
    "summary": "one stored session's figures",
    "export": "export a stored session to CSV or Parquet",
    "report": "a stored session's report, HTML and PDF",
}


def _ids(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("theatre")
    ap.add_argument("session")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for command, text in HELP.items():
        ap = commands.add_parser(command, help=text)
        _arguments(command, ap)
        ap.set_defaults(run=_run, command=command)


def _arguments(command: str, ap: argparse.ArgumentParser) -> None:
    if command == "sessions":
        ap.description = "List the stored sessions."
    elif command == "summary":
        ap.description = "Show one stored session's figures."
        _ids(ap)
    elif command == "export":
        ap.description = "Export one stored session, a file per table."
        _ids(ap)
        ap.add_argument("--format", choices=["csv", "parquet"], default="csv")
        ap.add_argument("--out", type=Path, default=Path("export"), help="directory (default: %(default)s)")
    else:
        ap.description = "Write one stored session's report: an HTML page, and a PDF with --pdf."
        _ids(ap)
        ap.add_argument("--out", type=Path, help="HTML file (default: report-THEATRE-SESSION.html)")
        ap.add_argument("--pdf", action="store_true", help="also print it to PDF with headless Chromium")


def _run(args: argparse.Namespace) -> int:
    import pandas as pd  # the review extra: imported only when a review command runs

    from isoperf.tools.review import ReviewError, Store

    command = args.command
    store = Store()
    try:
        if command == "sessions":
            table = store.sessions()
            if table.empty:
                assert store.settings is not None  # set by Store.__post_init__
                print(f"No sessions stored yet in database {store.settings.influx_database!r}.")
                return 0
            table["start"] = table["start"].dt.strftime("%Y-%m-%d %H:%M")
            with pd.option_context("display.width", 200, "display.max_columns", 20):
                print(table.round({"duration_min": 0, "peak_leakage_isolation_pct": 2}).to_string(index=False))
            return 0
        theatre, session = check_id(args.theatre, "theatre"), check_id(args.session, "session")
        if command == "summary":
            for key, value in store.summary(theatre, session).items():
                shown = f"{value:.4g}" if isinstance(value, float) else value
                print(f"  {key.replace('_', ' '):38} {shown if shown is not None else 'not available'}")
        elif command == "export":
            for path in store.export(theatre, session, args.out, args.format):
                print(path)
        else:
            from isoperf.tools.report import render

            out = args.out or Path(f"report-{theatre}-{session}.html")
            for path in render(store, theatre, session, out, pdf=args.pdf):
                print(path)
    except ReviewError as exc:
        print(f"isoperf {command}: {exc}", file=sys.stderr)
        return 1
    return 0
