"""Drift detection, two modes.

  python -m scripts.drift --stack STACK [--json] [--work-dir DIR]
  python -m scripts.drift engine --stack STACK [--json] [--work-dir DIR]
      Engine drift: a read-only refresh preview through the Automation API (needs the pulumi
      CLI, a backend login and AWS credentials). Per drifted resource: URN, type, operation
      and the properties that differ (old -> new), secrets masked.

  python -m scripts.drift scan --state EXPORT.json [--state ...] [--region R] [--endpoint-url URL] [--json]
      Account scan: `pulumi stack export` files against live AWS via boto3, no Pulumi CLI.
      Reports MISSING, CHANGED (safety properties) and UNMANAGED resources and a coverage figure.

Exit codes: 0 no drift, 3 drift found, 1 the check itself failed, 2 usage error (a bad option,
a --state file that is not a stack export); errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from scripts.drift import engine, report, scan, state
from scripts.lib import cli

MODES = ("engine", "scan")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m scripts.drift", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", metavar="{engine,scan}")

    engine_parser = modes.add_parser("engine", help="read-only refresh preview through the Automation API (default mode)")
    engine_parser.add_argument("--stack", required=True, help="stack name, e.g. staging or prod")
    engine_parser.add_argument("--work-dir", type=Path, default=engine.PROJECT_DIR,
                               help="the Pulumi project directory (default: this repository)")
    cli.add_common_arguments(engine_parser)

    scan_parser = modes.add_parser("scan", help="stack exports against live AWS, without the Pulumi CLI")
    scan_parser.add_argument("--state", type=Path, action="append", required=True, metavar="EXPORT.json",
                             help="a `pulumi stack export` file; repeat for every stack sharing the account/region")
    cli.add_common_arguments(scan_parser, endpoint=True)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Engine mode is the default: `--stack prod` alone means `engine --stack prod`.
    if args_list and args_list[0] not in MODES and args_list[0] not in ("-h", "--help"):
        args_list.insert(0, "engine")
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.mode is None:
        parser.error("choose a mode: engine (--stack STACK) or scan (--state EXPORT.json)")

    if args.mode == "engine":
        result = engine.run_engine(args.stack, args.work_dir.resolve())
        if args.json:
            cli.emit_json(result.to_json())
        else:
            report.print_engine(result)
        return report.finish(result.drifted, result.summary())

    states = state.load_exports(args.state)
    cli.info(f"scanning {', '.join(f'{s.project}/{s.stack}' for s in states)} against live AWS ...")
    found = scan.run_scan(states, region=args.region, endpoint_url=args.endpoint_url)
    if args.json:
        cli.emit_json(found.to_json())
    else:
        report.print_scan(found)
    return report.finish(found.drifted, found.summary())


if __name__ == "__main__":
    cli.run(main)
