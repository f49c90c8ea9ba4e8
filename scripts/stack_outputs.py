"""Read a stack's outputs the way CI does (`pulumi stack output --json > outputs.json`).

    python -m scripts.stack_outputs smoke --outputs outputs.json [--json]
    python -m scripts.stack_outputs summary --outputs outputs.json --stack prod [--summary-file PATH]

`smoke` judges the `smoke_test_report` output: exit 0 when every check passed, 1 when one
failed or the report is missing, secret or unreadable (CI cannot tell, so it does not pass),
2 when the --outputs file is missing or not the JSON object `pulumi stack output --json` prints.
The report is an object with a boolean `passed` (or `ok`/`success`, or `status` "passed"),
optionally with `checks`/`results`, a list of objects or a map whose items carry `passed`/`ok`;
every one of them must be true.

`summary` prints a Markdown table of the outputs for the job summary. Secret outputs already
read "[secret]" (`pulumi stack output --json` without `--show-secrets`); for anything else that
looks sensitive it first prints `::add-mask::` workflow commands on stdout, so the runner
hides those values from every later log line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from policy.rules import find_secrets
from scripts.lib import cli

SMOKE_OUTPUT = "smoke_test_report"
SECRET_MASK = "[secret]"  # noqa: S105 - what the CLI prints instead of a secret
_SENSITIVE_NAME = re.compile(r"(?i)(password|passwd|token|private[_-]?key|credential|auth|secret_value|connection_string|dsn)")
_VERDICT_KEYS = ("passed", "ok", "success")
_CHECK_LISTS = ("checks", "results")
_VALUE_WIDTH = 120


def load_outputs(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        cli.fail(f"--outputs {path}: no such file", cli.EXIT_USAGE)
    except (OSError, ValueError) as err:
        cli.fail(f"--outputs {path}: not JSON ({err.__class__.__name__}); expected what `pulumi stack output --json` "
                 "prints", cli.EXIT_USAGE)
    if not isinstance(document, dict):
        cli.fail(f"--outputs {path}: expected the JSON object `pulumi stack output --json` prints", cli.EXIT_USAGE)
    return document


def _item_verdict(item: Any) -> Optional[bool]:
    if isinstance(item, bool):
        return item
    if isinstance(item, dict):
        for key in _VERDICT_KEYS:
            if isinstance(item.get(key), bool):
                return bool(item[key])
        status = item.get("status")
        if isinstance(status, str):
            return status.lower() in ("passed", "pass", "ok", "success")
    return None


def smoke_verdict(outputs: dict[str, Any]) -> tuple[bool, str]:
    """(all passed, one-line reason)."""
    report = outputs.get(SMOKE_OUTPUT)
    if report is None:
        return False, f"the stack has no {SMOKE_OUTPUT} output"
    if report == SECRET_MASK:
        return False, f"{SMOKE_OUTPUT} is secret; it must be a plain output for CI to read"
    if isinstance(report, str):
        try:
            report = json.loads(report)
        except ValueError:
            return False, f"{SMOKE_OUTPUT} is not JSON"
    if not isinstance(report, dict):
        return False, f"{SMOKE_OUTPUT} is not an object"
    overall = _item_verdict(report)
    checks: list[tuple[str, Optional[bool]]] = []
    for key in _CHECK_LISTS:
        value = report.get(key)
        if isinstance(value, list):
            checks += [(str(c.get("name", i)) if isinstance(c, dict) else str(i), _item_verdict(c)) for i, c in enumerate(value)]
        elif isinstance(value, dict):
            checks += [(str(name), _item_verdict(c)) for name, c in value.items()]
    failed = [name for name, ok in checks if ok is False]
    if failed:
        return False, f"smoke checks failed: {', '.join(failed)}"
    if overall is False:
        return False, "the smoke report says it did not pass"
    if overall is None and not checks:
        return False, f"{SMOKE_OUTPUT} carries no verdict (passed/ok/status or checks)"
    if overall is None and any(ok is None for _, ok in checks):
        return False, "some smoke checks carry no verdict"
    return True, (f"all {len(checks)} smoke checks passed" if checks else "the smoke report passed")


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(key path, string) for every string in an output, however nested."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, path)


def sensitive_values(outputs: dict[str, Any]) -> list[str]:
    """Values to mask: everything under a credential-like key (at any depth), and any string
    that looks like a secret (the user-data detector of the policy pack)."""
    found: list[str] = []
    for name, value in outputs.items():
        for path, text in _strings(value, name):
            if text == SECRET_MASK or len(text) < 4:
                continue
            if _SENSITIVE_NAME.search(path) or find_secrets(text):
                found.append(text)
    return list(dict.fromkeys(found))


def add_mask_commands(value: str) -> list[str]:
    """`::add-mask::` workflow commands for a value. The runner masks what one command names as
    one string, but prints a multi-line value line by line, so each line (and the JSON-escaped
    form) gets its own command; the command's data is escaped as the runner decodes it."""
    def escape(text: str) -> str:
        return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return [f"::add-mask::{escape(form)}\n" for form in cli.Masker.forms(value)]


def markdown_summary(outputs: dict[str, Any], stack: str) -> str:
    lines = [f"### Stack outputs: {stack}", "", "| output | value |", "|---|---|"]
    for name in sorted(outputs):
        # Masked before it is cut: a cut value would no longer match what the masker knows.
        text = cli.masker(json.dumps(outputs[name], separators=(",", ":")))
        if len(text) > _VALUE_WIDTH:
            text = text[: _VALUE_WIDTH - 3] + "..."
        escaped = text.replace("|", "\\|")
        lines.append(f"| `{name}` | `{escaped}` |")
    ok, reason = smoke_verdict(outputs)
    lines += ["", f"Smoke report: {'passed' if ok else 'NOT passed'} ({reason})"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m scripts.stack_outputs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    smoke = commands.add_parser("smoke", help="exit 0 only when smoke_test_report says every check passed")
    smoke.add_argument("--outputs", type=Path, required=True, help="file written by `pulumi stack output --json`")
    cli.add_common_arguments(smoke)
    summary = commands.add_parser("summary", help="Markdown table of the outputs; ::add-mask:: for sensitive values")
    summary.add_argument("--outputs", type=Path, required=True, help="file written by `pulumi stack output --json`")
    summary.add_argument("--stack", required=True, help="stack name shown in the heading")
    summary.add_argument("--summary-file", type=cli.file_to_write, default=None,
                         help="append the table here (CI: $GITHUB_STEP_SUMMARY); default: stdout")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    outputs = load_outputs(args.outputs)
    if args.command == "smoke":
        ok, reason = smoke_verdict(outputs)
        if args.json:
            cli.emit_json({"passed": ok, "reason": reason})
        cli.verdict(ok, reason)
        return cli.EXIT_OK if ok else cli.EXIT_FAILURE

    for value in sensitive_values(outputs):
        # Registered with the runner before the value can appear anywhere in the log.
        sys.stdout.writelines(add_mask_commands(value))
        cli.masker.add(value)
    table = cli.masker(markdown_summary(outputs, args.stack))
    if args.summary_file is not None:
        with args.summary_file.open("a") as handle:
            handle.write(table)
    else:
        sys.stdout.write(table)
    cli.verdict(True, f"summarised {len(outputs)} outputs of stack {args.stack}")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
