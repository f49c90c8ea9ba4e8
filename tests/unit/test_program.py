"""The program as a whole: the output contract, the provider and its tags, names, the plan CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from harness.mock_engine import ROOT_DIR, Plan

FOUNDATION_OUTPUTS = {
    "vpc_id", "public_subnet_ids", "private_subnet_ids", "database_subnet_ids", "security_group_ids",
    "kms_key_arn", "backup_bucket_name", "app_secret_arn",
}


def test_output_contract(plan: Plan) -> None:
    assert FOUNDATION_OUTPUTS <= set(plan.outputs)
    assert set(plan.outputs["security_group_ids"]) >= {"alb", "api", "database", "redis", "dbops", "monitoring"}
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in plan.outputs)


def test_every_aws_resource_uses_the_tagging_provider(plan: Plan) -> None:
    provider = plan.one("pulumi:providers:aws")
    assert provider.inputs["region"] == "eu-central-1"
    tags = json.loads(provider.inputs["defaultTags"])["tags"] if isinstance(provider.inputs["defaultTags"], str) \
        else provider.inputs["defaultTags"]["tags"]
    assert tags == {"project": "psychology-api", "stack": plan.stack, "managed-by": "pulumi", "environment": plan.stack}
    for resource in plan.resources:
        if resource.custom and resource.type.startswith("aws:"):
            assert resource.provider and resource.provider.startswith(provider.urn), resource.name


def test_logical_names_are_unique(plan: Plan) -> None:
    counts = Counter(r.name for r in plan.resources)
    assert [name for name, n in counts.items() if n > 1] == []


def test_children_are_parented_to_their_component(plan: Plan) -> None:
    components = {r.name for r in plan.resources if not r.custom}
    for resource in plan.resources:
        if resource.custom and resource.type.startswith("aws:") and resource.type != "pulumi:providers:aws":
            assert resource.parent in components, f"{resource.name} has no component parent"


def test_the_plan_is_deterministic(plans: dict[str, Plan]) -> None:
    from harness.mock_engine import run_program

    again = run_program("staging")
    assert json.dumps(again.to_json(), sort_keys=True) == json.dumps(plans["staging"].to_json(), sort_keys=True)


def test_plan_cli_json_document() -> None:
    result = subprocess.run([sys.executable, "-m", "scripts.plan", "--stack", "prod", "--json"], cwd=ROOT_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["stack"] == "prod" and doc["outputs"]["vpc_id"].startswith("vpc-")
    first = doc["resources"][0]
    assert set(first) >= {"type", "name", "id", "parent", "inputs"}
    by_type = Counter(r["type"] for r in doc["resources"])
    assert by_type["aws:ec2/natGateway:NatGateway"] == 3
    assert len({r["inputs"]["availabilityZone"] for r in doc["resources"] if r["type"] == "aws:ec2/subnet:Subnet"}) == 3
    # References can be followed: every subnet's vpcId is the VPC's id.
    vpc_id = next(r["id"] for r in doc["resources"] if r["type"] == "aws:ec2/vpc:Vpc")
    assert all(r["inputs"]["vpcId"] == vpc_id for r in doc["resources"] if r["type"] == "aws:ec2/subnet:Subnet")
    assert doc["counts"] == dict(sorted(by_type.items()))
    assert result.stderr.strip().splitlines()[-1].startswith("PASS: planned")


def test_plan_cli_human_output_lists_resources_outputs_and_counts() -> None:
    result = subprocess.run([sys.executable, "-m", "scripts.plan", "--stack", "staging"], cwd=ROOT_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "+ aws:ec2/vpc:Vpc  network-vpc" in result.stdout
    assert "Outputs:" in result.stdout and "vpc_id:" in result.stdout
    assert re.search(r"^\s+1\s+aws:ec2/natGateway:NatGateway$", result.stdout, re.M)


def test_docs_document_every_config_key_and_output(plans: dict[str, Plan]) -> None:
    """The generated tables (python -m scripts.docs; tests/unit/test_docs.py keeps them fresh)."""
    configuration = (ROOT_DIR / "docs" / "configuration.md").read_text()
    project = yaml.safe_load((ROOT_DIR / "Pulumi.yaml").read_text())
    config_section = configuration[configuration.index("<!-- generated: configuration -->"):]
    for key in project["config"]:
        if ":" not in key:
            assert f"| `{key}` |" in config_section, f"docs/configuration.md's table lacks {key}"
    outputs_page = (ROOT_DIR / "docs" / "outputs.md").read_text()
    outputs_section = outputs_page[outputs_page.index("<!-- generated: outputs -->"):]
    for plan in plans.values():
        for output in plan.outputs:
            assert f"| `{output}` |" in outputs_section, f"docs/outputs.md's table lacks {output}"


def test_the_program_exports_exactly_the_output_contract(plans: dict[str, Plan]) -> None:
    from infra.outputs import CONDITIONAL_OUTPUTS, OUTPUTS

    exported = set().union(*(plan.outputs for plan in plans.values()))
    assert exported == set(OUTPUTS), "infra/outputs.py and the program's exports differ"
    for plan in plans.values():
        assert set(OUTPUTS) - set(plan.outputs) <= CONDITIONAL_OUTPUTS, plan.stack
        assert not plan.secret_outputs, "the contract holds no secret value"


def test_contract_exports_follow_the_contract_and_name_what_differs() -> None:
    from infra.outputs import CONDITIONAL_OUTPUTS, OUTPUTS, OutputContractError, contract_exports

    values = {name: f"value of {name}" for name in reversed(list(OUTPUTS))}
    assert list(contract_exports(values)) == list(OUTPUTS)
    required = {name: value for name, value in values.items() if name not in CONDITIONAL_OUTPUTS}
    assert set(contract_exports(required)) == set(OUTPUTS) - CONDITIONAL_OUTPUTS
    with pytest.raises(OutputContractError, match=r"missing \['vpc_id'\], not in the contract none"):
        contract_exports({name: value for name, value in values.items() if name != "vpc_id"})
    with pytest.raises(OutputContractError, match=r"missing none, not in the contract \['vpc_ids'\]"):
        contract_exports({**values, "vpc_ids": []})


def test_smtp_settings_leave_out_what_is_unset() -> None:
    from infra.args import smtp_settings
    from infra.config import parse_stack_config
    from tests.unit.test_config import raw_config

    unset = parse_stack_config(raw_config("staging", smtpHost="", smtpUser="", emailFrom=""))
    assert smtp_settings(unset) == {}
    partly = parse_stack_config(raw_config("staging", smtpHost="smtp.mail.invalid", smtpPort="587", smtpUser="",
                                           emailFrom="noreply@mail.invalid"))
    assert smtp_settings(partly) == {
        "EMAIL_HOST": "smtp.mail.invalid", "EMAIL_PORT": "587", "DEFAULT_FROM_EMAIL": "noreply@mail.invalid"}


def test_stack_files_hold_no_plain_secrets() -> None:
    from infra.config import SECRET_KEYS

    for stack in ("staging", "prod"):
        config = yaml.safe_load((ROOT_DIR / f"Pulumi.{stack}.yaml").read_text())["config"]
        for key, value in config.items():
            short = key.split(":", 1)[1]
            if short in SECRET_KEYS:
                assert isinstance(value, dict) and set(value) == {"secure"}, key
            assert not re.search(r"(password|secret|token|apikey)", short, re.I) or short in (
                "secretRotationDays", "secretRecoveryWindowDays") or isinstance(value, dict), key


def test_the_cli_entry_point_runs_the_same_program(plans: dict[str, Plan], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """infra/__main__.py is what `pulumi up` executes; under mocks it registers the same resources."""
    import runpy

    from harness.mock_engine import run_program
    from scripts.lib import rds_ca

    # The operator's copy of the RDS CA bundle, which `pulumi up` requires (any PEM here).
    bundle = tmp_path / "rds-global-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(rds_ca, "RDS_CA_BUNDLE", bundle)
    entry = str(ROOT_DIR / "infra" / "__main__.py")
    plan = run_program("staging", program=lambda: runpy.run_path(entry, run_name="__main__"))
    assert plan.counts() == plans["staging"].counts()
    assert plan.outputs == plans["staging"].outputs


def test_the_cli_entry_point_reports_bad_config_without_a_traceback() -> None:
    """The engine prints a RunError as its message only."""
    import runpy

    import pulumi
    import pytest

    from harness.mock_engine import run_program

    entry = str(ROOT_DIR / "infra" / "__main__.py")
    with pytest.raises(pulumi.RunError, match=r"invalid configuration: psychology-api:azCount = 1 "):
        run_program("staging", overrides={"azCount": 1}, program=lambda: runpy.run_path(entry, run_name="__main__"))


def test_release_steps_run_from_the_root_whatever_the_checkout_path(plan: Plan) -> None:
    """A command's `dir` is relative: the same in every checkout (a CI runner, a laptop), so no
    step runs again or runs in a stale directory because the repository moved."""
    import os
    from pathlib import Path

    commands = plan.of_type("command:local:Command")
    assert commands
    for step in commands:
        assert not os.path.isabs(step.inputs["dir"]), step.name
        assert (Path.cwd() / step.inputs["dir"]).resolve() == ROOT_DIR
        assert "dir" not in step.options.get("ignoreChanges", []), step.name
        assert "stderr" in step.options.get("additionalSecretOutputs", []), step.name


def test_release_step_dir_is_relative_to_the_programs_working_directory(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Under the CLI the program runs in infra/ (Pulumi.yaml `main`): the steps go one level up."""
    from harness.mock_engine import run_program

    monkeypatch.chdir(ROOT_DIR / "infra")
    plan = run_program("staging")
    dirs = {step.inputs["dir"] for step in plan.of_type("command:local:Command")}
    assert dirs == {".."}


def test_unexpected_script_errors_end_as_one_masked_line(capsys) -> None:  # type: ignore[no-untyped-def]
    """Every script's last line of defence: no traceback, the error's type and first line, secrets masked."""
    import pytest

    from scripts.lib import cli

    cli.masker.add("hunter2-secret-value")

    def failing(argv: object) -> int:
        raise RuntimeError("connection to postgresql://app:hunter2-secret-value@db:5432/x failed\nsecond line")

    with pytest.raises(SystemExit) as exit_info:
        cli.run(failing, [])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: RuntimeError: connection to postgresql://app:***@db:5432/x failed"]
