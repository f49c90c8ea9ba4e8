"""Offline plan: what `pulumi up` would build, without AWS credentials or the Pulumi CLI.

Runs the real program (infra.program) under Pulumi's mock engine with a stack's config file
and prints every resource (type, logical name, parent, the inputs that matter), the stack
outputs and a count per type. With --policy it also runs the security baseline (policy/rules.py,
the rules of the `policy` pack) over the planned resources and lists every violation.

With --provider-check the plan is translated into a Terraform configuration and judged by the
real hashicorp/aws provider from the local plugin mirror (`terraform validate` and an offline
`terraform plan`); each diagnostic is mapped back to the Pulumi resource and property. With
--checkov, checkov also judges that plan, gated by policy/checkov-skips.yaml.

Exit codes: 0 planned (and nothing refused), 1 a mandatory policy violation, a check that
cannot run or another error, 2 invalid configuration or inputs the provider or checkov refuse.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from harness.mock_engine import Plan, PlannedResource, run_program
from infra.config import ConfigError
from policy.model import Violation
from policy.plan import check_plan
from policy.rules import RULES
from scripts.lib import cli
from scripts.provider_check import checkov
from scripts.provider_check.check import EXIT_CANNOT_RUN, Report, run_check
from scripts.provider_check.terraform import CheckUnavailable, find_toolchain

_SKIPPED_INPUTS = {"tags", "tagsAll", "__defaults"}


def _summary(inputs: dict[str, Any], limit: int = 8, width: int = 70) -> str:
    parts = []
    for key, value in inputs.items():
        if key in _SKIPPED_INPUTS or value in (None, "", [], {}):
            continue
        if isinstance(value, (dict, list)):
            text = json.dumps(value, separators=(",", ":"))
        else:
            text = str(value)
        if len(text) > width:
            text = text[: width - 3] + "..."
        parts.append(f"{key}={text}")
        if len(parts) == limit:
            break
    return " ".join(parts)


def _print_human(plan: Plan) -> None:
    out = sys.stdout
    out.write(f"Plan for stack {plan.stack!r}: {len(plan.resources)} resources\n\n")
    depth: dict[Optional[str], int] = {None: 0}
    for r in plan.ordered():
        level = depth.get(r.parent, 0)
        if not r.custom:
            depth[r.name] = level + 1
        indent = "  " * level
        line = f"{indent}+ {r.type}  {r.name}"
        details = _summary(r.inputs)
        out.write(line + ("\n" + indent + "      " + details if details else "") + "\n")
    out.write("\nOutputs:\n")
    for name, value in plan.outputs.items():
        out.write(f"  {name}: {json.dumps(value)}\n")
    out.write("\nResources per type:\n")
    for type_token, count in plan.counts().items():
        out.write(f"  {count:4d}  {type_token}\n")


def _resource_dict(r: PlannedResource) -> dict[str, Any]:
    return r.to_json()


def _print_violations(violations: list[Violation]) -> None:
    out = sys.stdout
    out.write(f"\nPolicy: {len(RULES)} rules of the security baseline, {len(violations)} violation(s)\n")
    for v in violations:
        out.write(f"  [{v.enforcement}] {v.rule}  {v.resource_type}  {v.resource_name}\n"
                  f"      {v.message}  ({v.control})\n")


def _policy_document(violations: list[Violation]) -> dict[str, Any]:
    return {"rules": len(RULES), "violations": [v.to_json() for v in violations],
            "mandatory_violations": sum(1 for v in violations if v.enforcement == "mandatory")}


def provider_check(plan: Plan, with_checkov: bool, workdir: Optional[Path]) -> Report:
    """Run the provider check (and checkov) in `workdir`, or in a scratch folder removed after."""
    toolchain = find_toolchain()
    skips = checkov.load_skips() if with_checkov else []
    executable = checkov.find_checkov() if with_checkov else ""
    with tempfile.TemporaryDirectory(prefix="provider-check-") as scratch:
        folder = workdir or Path(scratch)
        cli.info(f"provider check: translating {len(plan.resources)} resources for hashicorp/aws "
                 f"{toolchain.provider_version} in {folder}")
        report, translation, workspace = run_check(plan, toolchain, folder)
        if with_checkov and report.planned:
            cli.info("checkov: judging the offline plan")
            findings, summary = checkov.judge(checkov.run_checkov(executable, workspace.show_plan()),
                                              skips, translation, plan.stack)
            report.findings.extend(findings)
            report.checkov = summary
        if workdir is None:
            report.workdir = None
    return report


def _print_report(report: Report) -> None:
    for finding in report.findings:
        cli.console.print(f"  {finding.severity}: {finding.line()}", markup=False,
                          style="red" if finding.severity == "error" else "yellow")
    for note in report.not_judged:
        cli.console.print(f"  not judged: {note}", markup=False)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m scripts.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", required=True, help="stack name: staging or prod (reads Pulumi.<stack>.yaml)")
    parser.add_argument("--config-file", type=Path, default=None,
                        help="plan this stack file instead of Pulumi.<stack>.yaml")
    parser.add_argument("--policy", action="store_true",
                        help="also run the security-baseline policy rules over the plan; exit 1 on any violation")
    parser.add_argument("--provider-check", action="store_true",
                        help="judge the plan with the real hashicorp/aws provider (terraform validate + offline plan); "
                             "prints the findings instead of the resource list; exit 2 when the provider refuses an input")
    parser.add_argument("--checkov", action="store_true",
                        help="with --provider-check: also run checkov over the offline plan, gated by policy/checkov-skips.yaml")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="with --provider-check: keep main.tf.json, the plan and its JSON in this folder")
    cli.add_common_arguments(parser)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkov or args.workdir) and not args.provider_check:
        parser.error("--checkov and --workdir need --provider-check")

    config_file = args.config_file
    if config_file is not None and not config_file.is_file():
        cli.fail(f"--config-file {config_file}: no such file", cli.EXIT_USAGE)
    if config_file is None and not (Path(__file__).resolve().parent.parent / f"Pulumi.{args.stack}.yaml").is_file():
        cli.fail(f"--stack {args.stack}: no Pulumi.{args.stack}.yaml in the project", cli.EXIT_USAGE)

    try:
        plan = run_program(args.stack, config_file=config_file)
    except ConfigError as err:
        for line in str(err).splitlines():
            cli.console.print(line, markup=False, style="red")
        return cli.EXIT_USAGE

    for warning in plan.warnings:
        cli.console.print(f"warning: {warning}", markup=False, style="yellow")
    if args.provider_check:
        return _provider_check_main(plan, args)
    violations = check_plan(plan) if args.policy else []
    if args.json:
        document = plan.to_json()
        if args.policy:
            document["policy"] = _policy_document(violations)
        cli.emit_json(document)
    else:
        _print_human(plan)
        if args.policy:
            _print_violations(violations)
    summary = f"planned {len(plan.resources)} resources for stack {args.stack}"
    if not args.policy:
        cli.verdict(True, summary)
        return cli.EXIT_OK
    mandatory = sum(1 for v in violations if v.enforcement == "mandatory")
    cli.verdict(mandatory == 0, f"{summary}; {len(RULES)} policy rules, {mandatory} mandatory violation(s)")
    return cli.EXIT_OK if mandatory == 0 else cli.EXIT_FAILURE


def _provider_check_main(plan: Plan, args: argparse.Namespace) -> int:
    try:
        report = provider_check(plan, args.checkov, args.workdir)
    except CheckUnavailable as err:
        cli.fail(f"provider check cannot run: {err}", EXIT_CANNOT_RUN)
    except ValueError as err:  # the skip list
        cli.fail(str(err), cli.EXIT_USAGE)
    violations = check_plan(plan) if args.policy else []
    mandatory = sum(1 for v in violations if v.enforcement == "mandatory")
    if args.json:
        document: dict[str, Any] = {"stack": plan.stack, "resources": len(plan.resources),
                                    "provider_check": report.to_json()}
        if args.policy:
            document["policy"] = _policy_document(violations)
        cli.emit_json(document)
    else:
        _print_report(report)
        if args.policy:
            _print_violations(violations)
    summary = report.summary() + (f"; {len(RULES)} policy rules, {mandatory} mandatory violation(s)" if args.policy else "")
    code = report.exit_code or (cli.EXIT_FAILURE if mandatory else cli.EXIT_OK)
    cli.verdict(code == cli.EXIT_OK, summary)
    return code


if __name__ == "__main__":
    cli.run(main)
