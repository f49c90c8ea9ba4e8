"""Strict configuration: unknown keys, non-YAML booleans, files that are not YAML or not a
mapping and documented placeholder values are refused in one line naming what is wrong."""

from __future__ import annotations

import runpy
from pathlib import Path

import pulumi
import pytest

from harness.mock_engine import ROOT_DIR, StackFileError, run_program
from infra.config import ConfigError
from infra.program import main
from scripts import plan as plan_cli
from scripts.lib import rds_ca


@pytest.fixture
def rds_ca_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The operator's copy of AWS's RDS CA bundle (any PEM will do for the program)."""
    bundle = tmp_path / "rds-global-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(rds_ca, "RDS_CA_BUNDLE", bundle)
    return bundle


def stack_file(tmp_path: Path, stack: str, replace: tuple[str, str] = ("", ""), append: str = "") -> Path:
    text = (ROOT_DIR / f"Pulumi.{stack}.yaml").read_text()
    if replace[0]:
        assert replace[0] in text
        text = text.replace(replace[0], replace[1])
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(text + append)
    return path


def config_lines(stack: str, path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        run_program(stack, config_file=path)
    return str(err.value).splitlines()


def test_an_unknown_key_is_refused_with_the_key_it_resembles(tmp_path: Path) -> None:
    path = stack_file(tmp_path, "staging", append="  psychology-api:maintenanse: true\n")
    assert config_lines("staging", path) == [
        "invalid configuration: psychology-api:maintenanse: unknown key, not declared in Pulumi.yaml "
        "(did you mean maintenance?)"]


def test_a_misspelt_key_gives_one_error_not_the_errors_of_its_default(tmp_path: Path) -> None:
    path = stack_file(tmp_path, "prod", replace=("psychology-api:azCount: 3", "psychology-api:azCunt: 3"))
    assert config_lines("prod", path) == [
        "invalid configuration: psychology-api:azCunt: unknown key, not declared in Pulumi.yaml (did you mean azCount?)"]


def test_a_key_unlike_any_other_gets_no_guess(tmp_path: Path) -> None:
    path = stack_file(tmp_path, "staging", append="  psychology-api:colour: blue\n")
    assert config_lines("staging", path) == [
        "invalid configuration: psychology-api:colour: unknown key, not declared in Pulumi.yaml"]


@pytest.mark.parametrize("value", ["yes", "on", '"1"', '"True "', "no"])
def test_booleans_are_yaml_booleans_only(tmp_path: Path, value: str) -> None:
    path = stack_file(tmp_path, "staging", replace=("natGatewayPerAz: false", f"natGatewayPerAz: {value}"))
    lines = config_lines("staging", path)
    assert len(lines) == 1
    assert lines[0].startswith("invalid configuration: psychology-api:natGatewayPerAz = ")
    assert lines[0].endswith("is not allowed: true or false (a YAML boolean, unquoted)")


@pytest.mark.parametrize("value", ["true", "True", "false"])
def test_yaml_booleans_are_accepted(tmp_path: Path, value: str) -> None:
    path = stack_file(tmp_path, "staging", replace=("natGatewayPerAz: false", f"natGatewayPerAz: {value}"))
    run_program("staging", config_file=path)


@pytest.mark.parametrize(("text", "message"), [
    ("config:\n  psychology-api:environment: staging\n   azCount: [\n", "Pulumi.staging.yaml:3:11: not valid YAML: "),
    ("- just\n- a list\n", "Pulumi.staging.yaml: expected a YAML mapping at the top, found list"),
    ("config: [1, 2]\n", "Pulumi.staging.yaml: expected 'config:' to be a mapping of keys to values, found list"),
    ("config:\n  key: \"unterminated\n", "Pulumi.staging.yaml:3:1: not valid YAML: "),
])
def test_a_file_that_is_not_a_yaml_mapping_exits_2_naming_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    path = tmp_path / "Pulumi.staging.yaml"
    path.write_text(text)
    with pytest.raises(StackFileError):
        run_program("staging", config_file=path)
    assert plan_cli.main(["--stack", "staging", "--config-file", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_prod_refuses_the_documented_placeholders_under_the_real_entry_point(rds_ca_bundle: Path) -> None:
    """`pulumi up` runs infra/__main__.py: the checked-in prod file still holds the example
    domain and zone, and that run stops before registering anything."""
    entry = str(ROOT_DIR / "infra" / "__main__.py")
    with pytest.raises(pulumi.RunError) as err:
        run_program("prod", program=lambda: runpy.run_path(entry, run_name="__main__"))
    lines = str(err.value).splitlines()
    assert lines == [
        'invalid configuration: psychology-api:domainName = "api.psychology.example.com" is not allowed: '
        "your own value, not a documented placeholder (reserved example/test names)",
        'invalid configuration: psychology-api:hostedZoneId = "Z0123456789EXAMPLE0AB" is not allowed: '
        "your own value, not a documented placeholder (the Route 53 zone of domainName)"]


def test_prod_with_its_own_values_passes_the_placeholder_rule(rds_ca_bundle: Path) -> None:
    plan = run_program("prod", overrides={"domainName": "api.psychology-platform.de", "hostedZoneId": "Z08154711ABCDEF"},
                       program=lambda: main(placeholders="refuse"))
    assert plan.warnings == []


@pytest.mark.parametrize(("key", "value"), [
    ("alarmEmail", "ops@example.org"), ("adminCidrs", ["198.51.100.0/24"]), ("domainName", "staging.api.test"),
])
def test_staging_warns_about_placeholders_and_plans(key: str, value: object, rds_ca_bundle: Path) -> None:
    # The stack's own domain and zone (the checked-in file holds the documented examples), then one placeholder.
    overrides: dict[str, object] = {"domainName": "api.staging.psychology-platform.de", "hostedZoneId": "Z08154711ABCDEF",
                                    key: value}
    plan = run_program("staging", overrides=overrides, program=lambda: main(placeholders="refuse"))
    assert len(plan.warnings) == 1
    assert plan.warnings[0].startswith(f"placeholder value psychology-api:{key} = ")
    assert plan.warnings[0].endswith("staging warns only; replace it before its `pulumi up` (an example zone or domain "
                                     "cannot validate the certificate, example addresses reach nobody)")


def test_the_offline_plan_warns_instead_of_refusing(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_cli.main(["--stack", "prod"]) == 0
    err = capsys.readouterr().err
    assert 'warning: placeholder value psychology-api:hostedZoneId = "Z0123456789EXAMPLE0AB": ' \
           "`pulumi preview/up` refuses it for prod" in err


def test_every_stack_refuses_to_deploy_without_the_rds_ca_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(rds_ca, "RDS_CA_BUNDLE", tmp_path / "absent.pem")
    entry = str(ROOT_DIR / "infra" / "__main__.py")
    with pytest.raises(pulumi.RunError) as err:
        run_program("staging", program=lambda: runpy.run_path(entry, run_name="__main__"))
    assert str(err.value) == (
        "invalid configuration: scripts/lib/certs/rds-global-bundle.pem: missing: add AWS's RDS CA bundle "
        "(docs/security.md#tls-to-the-database); every database client verifies the server against it and refuses "
        "to connect without it")
    plan = run_program("staging")  # the offline plan: a warning
    assert any(w.startswith("scripts/lib/certs/rds-global-bundle.pem: missing") for w in plan.warnings)
