"""Engine drift mode: parsing and masking of refresh-preview events, shaped as the Automation API
delivers them (EngineEvent / ResourcePreEvent / ResOutputsEvent / StepEventMetadata with
detailedDiff, diffs and old/new StepEventStateMetadata / SummaryEvent), built with the real
`pulumi.automation.events` classes from JSON dicts. The CLI-dependent test skips without `pulumi`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from pulumi.automation import events

from scripts.drift import engine
from scripts.drift.engine import drift_from_events, split_path
from scripts.drift.report import EXIT_DRIFT, EXIT_NO_DRIFT, finish
from scripts.lib import cli

ROOT = Path(__file__).resolve().parents[2]
SIG = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270"}
PROVIDER = "urn:pulumi:prod::psychology-api::pulumi:providers:aws::aws::04da6b54-80e4-46f7-96ec-b56ff0331ba9"


def urn(token: str, name: str) -> str:
    return f"urn:pulumi:prod::psychology-api::{token}::{name}"


def state(token: str, name: str, rid: str, outputs: dict[str, Any], inputs: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return {"type": token, "urn": urn(token, name), "custom": True, "delete": False, "id": rid,
            "parent": "urn:pulumi:prod::psychology-api::pulumi:pulumi:Stack::psychology-api-prod",
            "provider": PROVIDER, "protect": False, "retainOnDelete": False,
            "inputs": inputs or {}, "outputs": outputs}


def step_event(kind: str, op: str, token: str, name: str, old: Optional[dict[str, Any]], new: Optional[dict[str, Any]],
               detailed: Optional[dict[str, str]] = None, diffs: Optional[list[str]] = None,
               sequence: int = 1) -> events.EngineEvent:
    metadata: dict[str, Any] = {"op": op, "urn": urn(token, name), "type": token, "provider": PROVIDER,
                                "old": old, "new": new, "logical": False}
    if diffs is not None:
        metadata["diffs"] = diffs
    if detailed is not None:
        metadata["detailedDiff"] = {path: {"diffKind": kind_, "inputDiff": False} for path, kind_ in detailed.items()}
    return events.EngineEvent.from_json({"sequence": sequence, "timestamp": 1767225600,
                                         kind: {"metadata": metadata, "planning": True}})


def summary(changes: dict[str, int]) -> events.EngineEvent:
    return events.EngineEvent.from_json({"sequence": 99, "timestamp": 1767225700, "summaryEvent": {
        "maybeCorrupt": False, "durationSeconds": 12, "resourceChanges": changes, "PolicyPacks": {}, "isPreview": True}})


SG = "aws:ec2/securityGroup:SecurityGroup"
DB = "aws:rds/instance:Instance"
CACHE = "aws:elasticache/replicationGroup:ReplicationGroup"
FN = "aws:lambda/function:Function"
EC2 = "aws:ec2/instance:Instance"
BUCKET = "aws:s3/bucket:Bucket"


def refresh_events() -> list[events.EngineEvent]:
    https = {"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"], "description": "HTTPS"}
    ssh = {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"], "description": ""}
    sg_old = state(SG, "sg-alb", "sg-0a1", {"id": "sg-0a1", "ingress": [https], "vpcId": "vpc-1"})
    sg_new = state(SG, "sg-alb", "sg-0a1", {"id": "sg-0a1", "ingress": [https, ssh], "vpcId": "vpc-1"})
    db_old = state(DB, "db", "db-ABC", {"publiclyAccessible": False, "password": "old-master-password-1",
                                        "masterUserSecrets": [{"secretArn": "arn:aws:secretsmanager:eu-central-1:1:secret:x"}]})
    db_new = state(DB, "db", "db-ABC", {"publiclyAccessible": True,
                                        "password": SIG | {"plaintext": json.dumps("new-master-password-2")},
                                        "masterUserSecrets": [{"secretArn": "arn:aws:secretsmanager:eu-central-1:1:secret:x"}]})
    cache_old = state(CACHE, "redis", "prod-redis", {"authToken": "redis-token-aaaa1111", "transitEncryptionEnabled": True})
    cache_new = state(CACHE, "redis", "prod-redis", {"authToken": "redis-token-bbbb2222", "transitEncryptionEnabled": False})
    fn_old = state(FN, "dbops", "dbops", {"environment": {"variables": {"LOG_LEVEL": "info", "DB_PASSWORD": "fn-db-pass-1"}}})
    fn_new = state(FN, "dbops", "dbops", {"environment": {"variables": {"LOG_LEVEL": "debug", "DB_PASSWORD": "fn-db-pass-2"}}})
    host = state(EC2, "monitoring", "i-0123", {"instanceType": "t3.small"})
    bucket_old = state(BUCKET, "backups", "backups-bucket", {"tags": {"Name": "backups"}, "acl": None})
    bucket_new = state(BUCKET, "backups", "backups-bucket", {"tags": {"Name": "backups", "owner": "someone"}, "acl": None})
    same = state("aws:kms/key:Key", "data-key", "k-1", {"enableKeyRotation": True})
    return [
        events.EngineEvent.from_json({"sequence": 0, "timestamp": 1767225600, "preludeEvent": {"config": {}}}),
        step_event("resourcePreEvent", "refresh", SG, "sg-alb", sg_old, None, sequence=1),
        step_event("resOutputsEvent", "update", SG, "sg-alb", sg_old, sg_new,
                   detailed={"ingress[1]": "add"}, diffs=["ingress"], sequence=2),
        step_event("resOutputsEvent", "update", DB, "db", db_old, db_new,
                   detailed={"publiclyAccessible": "update", "password": "update"}, diffs=["publiclyAccessible", "password"]),
        step_event("resOutputsEvent", "update", CACHE, "redis", cache_old, cache_new,
                   detailed={"authToken": "update", "transitEncryptionEnabled": "update"}),
        step_event("resOutputsEvent", "update", FN, "dbops", fn_old, fn_new,
                   detailed={"environment.variables.LOG_LEVEL": "update", "environment.variables.DB_PASSWORD": "update"}),
        step_event("resOutputsEvent", "delete", EC2, "monitoring", host, None),
        # A refresh step with no detailed diff: the parser works out the differing paths itself.
        step_event("resOutputsEvent", "refresh", BUCKET, "backups", bucket_old, bucket_new),
        step_event("resOutputsEvent", "same", "aws:kms/key:Key", "data-key", same, same),
        events.EngineEvent.from_json({"sequence": 50, "timestamp": 1767225650, "diagnosticEvent": {
            "message": "warning: redis-token-bbbb2222 was rotated outside Pulumi", "color": "never", "severity": "warning"}}),
        summary({"same": 40, "update": 5, "delete": 1}),
    ]


@pytest.fixture
def report():  # type: ignore[no-untyped-def]
    secret_paths = {urn(CACHE, "redis"): frozenset({"authToken"})}
    return drift_from_events(refresh_events(), secret_paths, stack="prod")


def by_type(report, token):  # type: ignore[no-untyped-def]
    return next(f for f in report.drifted_resources if f.type == token)


def test_each_drifted_resource_has_urn_type_operation_and_differing_properties(report) -> None:  # type: ignore[no-untyped-def]
    assert [(f.type, f.operation) for f in report.drifted_resources] == [
        (SG, "update"), (DB, "update"), (CACHE, "update"), (FN, "update"), (EC2, "delete"), (BUCKET, "update")]
    sg = by_type(report, SG)
    assert sg.urn == urn(SG, "sg-alb") and sg.id == "sg-0a1"
    [change] = sg.changes
    assert (change.path, change.kind, change.old) == ("ingress[1]", "add", None)
    assert change.new == {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"], "description": ""}
    assert [(c.path, c.old, c.new) for c in by_type(report, BUCKET).changes] == [("tags.owner", None, "someone")]
    assert by_type(report, EC2).changes == []
    assert report.resource_changes == {"same": 40, "update": 5, "delete": 1}
    assert report.drifted and "6 resources drifted (1 delete, 5 update)" in report.summary()


def test_secrets_are_masked_from_every_source(report) -> None:  # type: ignore[no-untyped-def]
    db = {c.path: (c.old, c.new) for c in by_type(report, DB).changes}
    # Secret-wrapped new value, and its old plain-text twin: both masked.
    assert db["password"] == ("[secret]", "[secret]")
    assert db["publiclyAccessible"] == (False, True)
    cache = {c.path: (c.old, c.new) for c in by_type(report, CACHE).changes}
    # Marked secret by the state (additionalSecretOutputs), plain text in the events.
    assert cache["authToken"] == ("[secret]", "[secret]")
    assert cache["transitEncryptionEnabled"] == (True, False)
    fn = {c.path: (c.old, c.new) for c in by_type(report, FN).changes}
    assert fn["environment.variables.DB_PASSWORD"] == ("[secret]", "[secret]")  # secret-looking name
    assert fn["environment.variables.LOG_LEVEL"] == ("info", "debug")
    # The values reached the masker: they are masked wherever else they appear.
    assert report.diagnostics == ["warning: *** was rotated outside Pulumi"]
    document = json.dumps(cli.masker.data(report.to_json()))
    for value in ("old-master-password-1", "new-master-password-2", "redis-token-aaaa1111", "redis-token-bbbb2222",
                  "fn-db-pass-1", "fn-db-pass-2"):
        assert value not in document


@pytest.mark.parametrize(("name", "secret"), [
    ("password", True), ("masterPassword", True), ("authToken", True), ("DB_PASSWORD", True), ("secretString", True),
    ("clientSecret", True), ("privateKey", True), ("secretArn", False), ("secretId", False), ("kmsKeyId", False),
    ("masterUserSecrets", False), ("publiclyAccessible", False),
])
def test_secret_looking_names(name: str, secret: bool) -> None:
    from scripts.drift.masking import secret_looking_name

    assert secret_looking_name(name) is secret


def test_json_document_shape(report) -> None:  # type: ignore[no-untyped-def]
    doc = report.to_json()
    assert set(doc) == {"mode", "stack", "drifted", "resources", "resource_changes", "diagnostics"}
    assert doc["mode"] == "engine" and doc["stack"] == "prod" and doc["drifted"] is True
    assert set(doc["resources"][0]) == {"urn", "type", "operation", "id", "changes"}
    assert set(doc["resources"][0]["changes"][0]) == {"path", "kind", "old", "new"}


def test_nothing_drifted_when_every_step_is_same_or_an_unchanged_refresh() -> None:
    key = state("aws:kms/key:Key", "data-key", "k-1", {"enableKeyRotation": True})
    quiet = drift_from_events([
        step_event("resourcePreEvent", "refresh", "aws:kms/key:Key", "data-key", key, None),
        step_event("resOutputsEvent", "refresh", "aws:kms/key:Key", "data-key", key, key),
        step_event("resOutputsEvent", "same", "aws:kms/key:Key", "data-key", key, key),
        summary({"same": 1}),
    ], stack="prod")
    assert not quiet.drifted and quiet.summary() == "stack prod: no drift (read-only refresh preview)"
    assert finish(quiet.drifted, quiet.summary()) == EXIT_NO_DRIFT


def test_refresh_step_without_new_state_means_the_resource_is_gone() -> None:
    host = state(EC2, "monitoring", "i-0123", {"instanceType": "t3.small"})
    gone = drift_from_events([step_event("resOutputsEvent", "refresh", EC2, "monitoring", host, None)])
    assert [(f.operation, f.id) for f in gone.drifted_resources] == [("delete", "i-0123")]
    assert finish(gone.drifted, gone.summary()) == EXIT_DRIFT


def test_a_failed_read_or_an_unfinished_step_is_not_a_deletion() -> None:
    host = state(EC2, "monitoring", "i-0123", {"instanceType": "t3.small"})
    failed = events.EngineEvent.from_json({"sequence": 3, "timestamp": 1, "resOpFailedEvent": {
        "metadata": {"op": "refresh", "urn": urn(EC2, "monitoring"), "type": EC2, "provider": PROVIDER, "old": host},
        "status": 1, "steps": 0}})
    found = drift_from_events([step_event("resourcePreEvent", "refresh", EC2, "monitoring", host, None), failed,
                               step_event("resourcePreEvent", "refresh", BUCKET, "backups",
                                          state(BUCKET, "backups", "b", {}), None)])
    assert found.drifted_resources == []
    assert found.diagnostics == [f"could not read {urn(EC2, 'monitoring')}: see the error above"]


def test_input_paths_fall_back_to_inputs() -> None:
    old = state(DB, "db", "db-1", {"publiclyAccessible": False}, inputs={"allocatedStorage": 20})
    new = state(DB, "db", "db-1", {"publiclyAccessible": False}, inputs={"allocatedStorage": 50})
    found = drift_from_events([step_event("resOutputsEvent", "update", DB, "db", old, new,
                                          detailed={"allocatedStorage": "update"})])
    assert [(c.path, c.old, c.new) for c in found.drifted_resources[0].changes] == [("allocatedStorage", 20, 50)]


def test_events_may_be_given_as_json_dicts() -> None:
    host = state(EC2, "monitoring", "i-0123", {"instanceType": "t3.small"})
    raw = {"sequence": 1, "timestamp": 1, "resOutputsEvent": {"metadata": {
        "op": "delete", "urn": urn(EC2, "monitoring"), "type": EC2, "provider": PROVIDER, "old": host}}}
    assert drift_from_events([raw]).drifted_resources[0].operation == "delete"


def test_whole_secret_parents_mask_their_children() -> None:
    old = state(FN, "dbops", "dbops", {"environment": SIG | {"plaintext": json.dumps({"variables": {"KEY": "abc-secret-1"}})}})
    new = state(FN, "dbops", "dbops", {"environment": {"variables": {"KEY": "abc-secret-2"}}})
    found = drift_from_events([step_event("resOutputsEvent", "update", FN, "dbops", old, new,
                                          detailed={"environment.variables.KEY": "update"})])
    [change] = found.drifted_resources[0].changes
    assert (change.old, change.new) == ("[secret]", "[secret]")
    assert "abc-secret-1" not in cli.masker("abc-secret-1") and "abc-secret-2" not in cli.masker("abc-secret-2")


@pytest.mark.parametrize(("path", "parts"), [
    ("ingress[1].cidrBlocks[0]", ["ingress", 1, "cidrBlocks", 0]),
    ('tags["kubernetes.io/role"]', ["tags", "kubernetes.io/role"]),
    ("environment.variables.DB_PASSWORD", ["environment", "variables", "DB_PASSWORD"]),
])
def test_engine_property_paths(path: str, parts: list[Any]) -> None:
    assert split_path(path) == parts


def test_without_the_pulumi_cli_the_command_fails_with_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # a PATH without pulumi, whatever this machine has
    result = subprocess.run([sys.executable, "-m", "scripts.drift", "--stack", "prod"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: the pulumi CLI is not on PATH: install it (https://www.pulumi.com/docs/install/) or use the "
        "CLI-free `python -m scripts.drift scan --state EXPORT.json`"]
    explicit = subprocess.run([sys.executable, "-m", "scripts.drift", "engine", "--stack", "prod", "--json"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
    assert explicit.returncode == 1 and "Traceback" not in explicit.stderr and explicit.stdout == ""


def test_backend_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PULUMI_BACKEND_URL", "PULUMI_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "home"))
    (tmp_path / "Pulumi.yaml").write_text("name: x\nruntime: python\n")
    assert not engine.backend_configured(tmp_path)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "credentials.json").write_text(json.dumps({"current": "s3://state-bucket", "accessTokens": {}}))
    assert engine.backend_configured(tmp_path)
    (tmp_path / "home" / "credentials.json").unlink()
    (tmp_path / "Pulumi.yaml").write_text("name: x\nruntime: python\nbackend:\n  url: file://~/.state\n")
    assert engine.backend_configured(tmp_path)


def test_missing_project_dir_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(cli.ScriptError, match="no Pulumi.yaml"):
        engine.preflight("prod", tmp_path)


@pytest.mark.skipif(shutil.which("pulumi") is None, reason="needs the pulumi CLI on PATH (not installable here)")
def test_engine_mode_against_a_real_cli_and_an_empty_local_stack(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: drift-smoke\nruntime: python\n")
    env = {**os.environ, "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}", "PULUMI_CONFIG_PASSPHRASE": "drift-test",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    (tmp_path / "state").mkdir()
    subprocess.run(["pulumi", "stack", "init", "dev", "--non-interactive"], cwd=project, env=env, check=True,
                   capture_output=True, timeout=300)
    result = subprocess.run([sys.executable, "-m", "scripts.drift", "--stack", "dev", "--work-dir", str(project), "--json"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["drifted"] is False


def test_usage_errors_exit_2_not_the_drift_code() -> None:
    for args in (["scan"], ["--bogus"], []):
        result = subprocess.run([sys.executable, "-m", "scripts.drift", *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2 and EXIT_DRIFT == 3, (args, result.stderr)
        assert result.stdout == "" and "Traceback" not in result.stderr
