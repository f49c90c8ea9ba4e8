"""One contract for every command-line tool (scripts/lib/cli.py), run as an operator runs them
(`python -m scripts.X` in a subprocess): exit 0 success, 1 runtime failure, 2 usage error (an
unknown or missing option, a value of the wrong type or out of range, a missing file or a file
of the wrong kind named by an option), and for `scripts.drift` alone 3 "drift found". Every
failure ends with exactly one short last line (`error: ...`, or the verdict `FAIL: ...`), never a
traceback; every option and subcommand has help text."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scripts.dbops import checks
from scripts.dbops.checks import CheckResult
from scripts.lib import cli
from scripts.lib.cli import SHORT_LINE
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
CLIS = {
    "plan": "scripts.plan", "migrate": "scripts.migrate", "smoke": "scripts.smoke", "rotate": "scripts.rotate",
    "release": "scripts.release", "backup": "scripts.backup", "restore": "scripts.restore",
    "restore_drill": "scripts.restore_drill", "stack_outputs": "scripts.stack_outputs", "drift": "scripts.drift",
    "docs": "scripts.docs",
}
SUBCOMMANDS = {"release": ["invoke", "snapshot", "wait-healthy"], "stack_outputs": ["smoke", "summary"],
               "drift": ["engine", "scan"]}
# Variables the tools read instead of an option: a developer's shell must not change a verdict.
PROJECT_VARIABLES = ("PSYCHOLOGY_API_DSN", "SMOKE_REDIS_URL", "PGSSLROOTCERT", "MIGRATIONS_DIR", "AWS_ENDPOINT_URL",
                     "PG_BIN", "PSYCHOLOGY_API_DEBUG", "AWS_PROFILE")
CLOSED_PORT = free_port()  # nothing listens there: connections are refused at once
UNREACHABLE_DSN = (f"host=127.0.0.1 port={CLOSED_PORT} dbname=psychology user=psychology_app_a "
                   "sslrootcert=/etc/ssl/certs/ca-certificates.crt")
UNREACHABLE_AWS = ("--endpoint-url", f"http://127.0.0.1:{CLOSED_PORT}", "--region", "eu-central-1")
DSN = ("--dsn", UNREACHABLE_DSN)


@dataclass(frozen=True)
class Case:
    cli: str
    case: str
    args: tuple[str, ...]
    code: int
    says: str  # part of the last line
    last: str = "error: "  # how the last line starts

    @property
    def id(self) -> str:
        return f"{self.cli}: {self.case}"


USAGE = 2
FAILURE = 1
CASES = [
    # scripts.plan
    Case("plan", "unknown option", ("--stack", "staging", "--bogus"), USAGE, "unrecognized arguments: --bogus"),
    Case("plan", "missing required option", (), USAGE, "required: --stack"),
    Case("plan", "unknown stack", ("--stack", "nope"), USAGE, "no Pulumi.nope.yaml"),
    Case("plan", "missing file", ("--stack", "staging", "--config-file", "{missing}"), USAGE, "no such file"),
    Case("plan", "option needing another", ("--stack", "staging", "--checkov"), USAGE, "need --provider-check"),
    # scripts.migrate
    Case("migrate", "unknown option", (*DSN, "--bogus"), USAGE, "unrecognized arguments: --bogus"),
    Case("migrate", "missing database", (), USAGE, "a database is required"),
    Case("migrate", "bad type", (*DSN, "--lock-wait", "soon"), USAGE, "--lock-wait: invalid int value: 'soon'"),
    Case("migrate", "negative wait", (*DSN, "--lock-wait", "-5"), USAGE, "--lock-wait: must be at least 0"),
    Case("migrate", "timeout that is not a number", (*DSN, "--lock-timeout", "nan"), USAGE,
         "--lock-timeout: invalid float value: 'nan'"),
    Case("migrate", "timeout PostgreSQL would read as none", (*DSN, "--statement-timeout", "0.0004"), USAGE,
         "--statement-timeout: must be at least 0.001"),
    Case("migrate", "port out of range", (*DSN, "--db-port", "0"), USAGE, "--db-port: must be at least 1"),
    Case("migrate", "invalid DSN", ("--dsn", "host=db port"), USAGE, "--dsn is not a valid PostgreSQL connection"),
    Case("migrate", "DSN with a port out of range", ("--dsn", "postgresql://app@db:99999/psychology"), USAGE,
         "--dsn has the port '99999'"),
    Case("migrate", "DSN without a database", ("--dsn", "host=db user=app"), USAGE, "--dsn lacks dbname"),
    Case("migrate", "missing directory", (*DSN, "--dir", "{missing}"), USAGE, "--dir: no such directory"),
    Case("migrate", "directory that is a file", (*DSN, "--dir", "{not_json}"), USAGE, "--dir: not a directory"),
    Case("migrate", "unreachable database", DSN, FAILURE, "Connection refused"),
    # scripts.smoke
    Case("smoke", "unknown option", ("--url", "https://api.example.com", "--bogus"), USAGE, "unrecognized arguments"),
    Case("smoke", "nothing to check", (), USAGE, "nothing to check"),
    Case("smoke", "bad type", ("--url", "http://127.0.0.1:1", "--attempts", "x"), USAGE, "invalid int value: 'x'"),
    Case("smoke", "no attempts", ("--url", "http://127.0.0.1:1", "--attempts", "0"), USAGE, "--attempts: must be at least 1"),
    Case("smoke", "negative wait", ("--url", "http://127.0.0.1:1", "--initial-wait", "-1"), USAGE,
         "--initial-wait: must be at least 0"),
    Case("smoke", "URL without a scheme", ("--url", "api.example.com"), USAGE, "--url: expected an http:// or https:// URL"),
    Case("smoke", "Redis URL of another scheme", ("--redis-url", "http://cache:6379"), USAGE,
         "--redis-url: a Redis URL starts with redis:// or rediss://"),
    Case("smoke", "static path without a slash", ("--url", "https://api.example.com", "--static-path", "static/x.css"), USAGE,
         "--static-path: expected a path starting with /"),
    Case("smoke", "summary without JSON", ("--url", "https://api.example.com", "--summary-only"), USAGE,
         "--summary-only shapes the --json document"),
    Case("smoke", "missing CA bundle", ("--url", "https://127.0.0.1:1", "--ca-bundle", "{missing}"), USAGE,
         "--ca-bundle: no such file"),
    Case("smoke", "missing migrations", (*DSN, "--migrations-dir", "{missing}"), USAGE, "--migrations-dir: no such directory"),
    Case("smoke", "unreachable API", ("--url", f"http://127.0.0.1:{CLOSED_PORT}", "--attempts", "1"), FAILURE,
         "0/3 smoke checks passed; failed: health (", last="FAIL: "),
    # scripts.rotate
    Case("rotate", "unknown option", ("--secret-id", "s", "--bogus"), USAGE, "unrecognized arguments: --bogus"),
    Case("rotate", "missing required option", (), USAGE, "required: --secret-id"),
    Case("rotate", "bad type", ("--secret-id", "s", "--timeout", "long"), USAGE, "--timeout: invalid float value"),
    Case("rotate", "unknown step", ("--secret-id", "s", "--step", "resetSecret"), USAGE, "invalid choice: 'resetSecret'"),
    Case("rotate", "missing CA bundle", ("--secret-id", "s", "--redis-ca-bundle", "{missing}"), USAGE,
         "--redis-ca-bundle: no such file"),
    Case("rotate", "unreachable AWS", ("--secret-id", "s", *UNREACHABLE_AWS), FAILURE, "Could not connect"),
    # scripts.release
    Case("release", "unknown option", ("invoke", "--function", "f", "--bogus"), USAGE, "unrecognized arguments: --bogus"),
    Case("release", "missing subcommand", (), USAGE, "required: command"),
    Case("release", "missing required option", ("snapshot",), USAGE, "required: --db-instance"),
    Case("release", "bad type", ("snapshot", "--db-instance", "db", "--wait-minutes", "x"), USAGE,
         "--wait-minutes: invalid int value: 'x'"),
    Case("release", "zero poll interval", ("snapshot", "--db-instance", "db", "--poll-seconds", "0"), USAGE,
         "--poll-seconds: must be at least 1"),
    Case("release", "zero poll interval while waiting", ("wait-healthy", "--target-group-arn", "tg", "--poll-seconds", "0"),
         USAGE, "--poll-seconds: must be at least 1"),
    Case("release", "payload not JSON", ("invoke", "--function", "f", "--payload", "not json"), USAGE, "--payload is not JSON"),
    Case("release", "unreachable AWS", ("invoke", "--function", "f", *UNREACHABLE_AWS), FAILURE, "Could not connect"),
    # scripts.backup
    Case("backup", "unknown option", ("--bucket", "b", *DSN, "--bogus"), USAGE, "unrecognized arguments: --bogus"),
    Case("backup", "missing required option", DSN, USAGE, "required: --bucket"),
    Case("backup", "bad type", ("--bucket", "b", *DSN, "--part-size-mib", "big"), USAGE, "invalid int value: 'big'"),
    Case("backup", "missing pg_dump directory", ("--bucket", "b", *DSN, "--pg-bin", "{missing}"), USAGE,
         "--pg-bin: no such directory"),
    Case("backup", "unreachable database", ("--bucket", "b", *DSN, *UNREACHABLE_AWS), FAILURE, "Connection refused"),
    # scripts.restore
    Case("restore", "unknown option", ("--bucket", "b", "--latest", *DSN, "--bogus"), USAGE, "unrecognized arguments"),
    Case("restore", "missing required option", ("--bucket", "b", *DSN), USAGE, "one of the arguments --key --latest"),
    Case("restore", "bad type", ("--bucket", "b", "--latest", *DSN, "--jobs", "x"), USAGE, "invalid int value: 'x'"),
    Case("restore", "source database with a key", ("--bucket", "b", "--key", "k.dump", "--source-db", "psychology", *DSN),
         USAGE, "--source-db narrows --latest"),
    Case("restore", "missing spool directory", ("--bucket", "b", "--latest", *DSN, "--spool-dir", "{missing}"), USAGE,
         "--spool-dir: no such directory"),
    Case("restore", "unreachable AWS", ("--bucket", "b", "--latest", *DSN, *UNREACHABLE_AWS), FAILURE, "Could not connect"),
    # scripts.restore_drill
    Case("restore_drill", "unknown option", ("--bucket", "b", *DSN, "--bogus"), USAGE, "unrecognized arguments"),
    Case("restore_drill", "missing required option", DSN, USAGE, "required: --bucket"),
    Case("restore_drill", "jobs out of range", ("--bucket", "b", *DSN, "--jobs", "0"), USAGE, "--jobs: must be at least 1"),
    Case("restore_drill", "missing pg_restore directory", ("--bucket", "b", *DSN, "--pg-bin", "{missing}"), USAGE,
         "--pg-bin: no such directory"),
    Case("restore_drill", "unreachable AWS", ("--bucket", "b", *DSN, *UNREACHABLE_AWS), FAILURE, "Could not connect"),
    # scripts.stack_outputs
    Case("stack_outputs", "unknown option", ("smoke", "--outputs", "{outputs_ok}", "--bogus"), USAGE, "unrecognized"),
    Case("stack_outputs", "missing subcommand", (), USAGE, "required: command"),
    Case("stack_outputs", "missing required option", ("smoke",), USAGE, "required: --outputs"),
    Case("stack_outputs", "missing file", ("smoke", "--outputs", "{missing}"), USAGE, "no such file"),
    Case("stack_outputs", "file that is not JSON", ("smoke", "--outputs", "{not_json}"), USAGE, "not JSON"),
    Case("stack_outputs", "summary into a missing directory",
         ("summary", "--outputs", "{outputs_ok}", "--stack", "prod", "--summary-file", "{missing}/summary.md"), USAGE,
         "--summary-file: no such directory"),
    Case("stack_outputs", "failed smoke report", ("smoke", "--outputs", "{outputs_failed}"), FAILURE,
         "the smoke report says it did not pass", last="FAIL: "),
    # scripts.drift
    Case("drift", "unknown option", ("--stack", "prod", "--bogus"), USAGE, "unrecognized arguments: --bogus"),
    Case("drift", "no mode", (), USAGE, "choose a mode"),
    Case("drift", "missing required option", ("scan",), USAGE, "required: --state"),
    Case("drift", "missing file", ("scan", "--state", "{missing}"), USAGE, "no such file"),
    Case("drift", "export that is not JSON", ("scan", "--state", "{not_json}"), USAGE, "not readable JSON"),
    Case("drift", "JSON that is not an export", ("scan", "--state", "{not_an_export}"), USAGE,
         "not a Pulumi stack export"),
    Case("drift", "export of a list", ("scan", "--state", "{a_list}"), USAGE, "not a Pulumi stack export"),
    Case("drift", "empty deployment", ("scan", "--state", "{empty_deployment}"), USAGE, "no resources list"),
    Case("drift", "unsupported version", ("scan", "--state", "{version_9}"), USAGE, "unsupported stack export version 9"),
    Case("drift", "missing project directory", ("engine", "--stack", "prod", "--work-dir", "{missing}"), USAGE,
         "--work-dir"),
    Case("drift", "unreachable AWS", ("scan", "--state", "{export}", *UNREACHABLE_AWS), FAILURE, "Could not connect"),
    # scripts.docs
    Case("docs", "unknown option", ("--check", "--bogus"), USAGE, "unrecognized arguments: --bogus"),
    Case("docs", "missing directory", ("--check", "--docs-dir", "{missing}"), USAGE, "--docs-dir: no such directory"),
    Case("docs", "folder without the generated pages", ("--check", "--docs-dir", "{empty_dir}"), FAILURE,
         "configuration.md is missing"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("cli-inputs")
    provider = {"urn": "urn:pulumi:prod::psychology-api::pulumi:providers:aws::aws", "custom": True, "id": "p-1",
                "type": "pulumi:providers:aws", "inputs": {"region": "eu-central-1"}, "outputs": {}}
    documents = {
        "not_an_export": {"foo": 1},
        "a_list": [],
        "empty_deployment": {"version": 3, "deployment": {}},
        "version_9": {"version": 9, "deployment": {"resources": []}},
        "export": {"version": 3, "deployment": {"manifest": {}, "resources": [provider]}},
        "outputs_ok": {"smoke_test_report": {"passed": True}},
        "outputs_failed": {"smoke_test_report": {"passed": False}},
    }
    paths = {"missing": str(folder / "missing"), "not_json": str(folder / "not.json"), "empty_dir": str(folder / "empty")}
    Path(paths["empty_dir"]).mkdir()
    Path(paths["not_json"]).write_text("this is not JSON\n")
    for name, document in documents.items():
        paths[name] = str(folder / f"{name}.json")
        Path(paths[name]).write_text(json.dumps(document))
    return paths


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_VARIABLES}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"})
    return env


def run_cli(tool: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", CLIS[tool], *args], cwd=ROOT, env=environment(), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_exit_code_and_one_short_last_line(case: Case, files: dict[str, str]) -> None:
    result = run_cli(case.cli, [arg.format(**files) for arg in case.args])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == case.code, result.stderr
    assert "Traceback" not in result.stderr
    assert lines and lines[-1].startswith(case.last) and case.says in lines[-1], lines[-1:]
    assert len(lines[-1]) <= SHORT_LINE, lines[-1]
    assert sum(1 for line in lines if line.startswith(("error:", "PASS:", "FAIL:"))) == 1, lines
    if case.code == USAGE:
        assert result.stdout == ""


def test_every_cli_has_rows_for_each_kind_of_input() -> None:
    for tool in CLIS:
        kinds = {c.case for c in CASES if c.cli == tool}
        assert "unknown option" in kinds, tool
        assert any(c.cli == tool and c.code == USAGE and c.case != "unknown option" for c in CASES), tool
        # The plan's runtime failures (a policy violation, a provider check that cannot run) have their own tests.
        assert any(c.cli == tool and c.code == FAILURE for c in CASES) or tool == "plan", tool


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, (*path, name))
    return found


def _without_help(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            missing += [f"subcommand {c.dest}" for c in action._choices_actions if not c.help]
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append("/".join(action.option_strings) or action.dest)
    return missing


def build_parser(tool: str) -> argparse.ArgumentParser:
    module = importlib.import_module(CLIS[tool] + (".__main__" if tool == "drift" else ""))
    parser: argparse.ArgumentParser = module.build_parser()
    return parser


@pytest.mark.parametrize("tool", list(CLIS))
def test_every_option_and_subcommand_has_help(tool: str) -> None:
    for path, parser in _parsers(build_parser(tool)):
        assert _without_help(parser) == [], (tool, path)


@pytest.mark.parametrize(("tool", "subcommand"), [(t, sub) for t in CLIS for sub in ["", *SUBCOMMANDS.get(t, [])]])
def test_help_exits_0_and_lists_every_option(tool: str, subcommand: str) -> None:
    parser = dict(_parsers(build_parser(tool)))[(subcommand,) if subcommand else ()]
    result = run_cli(tool, [*([subcommand] if subcommand else []), "--help"])
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr
    for action in parser._actions:
        for option in action.option_strings:
            assert option in result.stdout, (tool, subcommand, option)


# --- the shared pieces, in process ---------------------------------------------------------------

@pytest.fixture
def no_registered_secrets() -> Iterator[None]:
    """The shared masker as a fresh process has it: values that tests run before this one in the
    same worker registered (a rotation test's "x" * 60 key) would mask this test's text."""
    registered = set(cli.masker._values)
    cli.masker._values.clear()
    try:
        yield
    finally:
        cli.masker._values.update(registered)


@pytest.mark.usefixtures("no_registered_secrets")
def test_a_long_verdict_or_error_is_cut_with_the_full_text_above(capsys: pytest.CaptureFixture[str]) -> None:
    long_text = "3/7 smoke checks passed; failed: " + "; ".join(f"check{i} (" + "x" * 120 + ")" for i in range(4))
    cli.verdict(False, long_text)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"details: {long_text}"
    assert len(lines[1]) == SHORT_LINE and lines[1].startswith("FAIL: 3/7 smoke checks passed") and lines[1].endswith("...")

    def failing(_argv: object) -> int:
        raise cli.ScriptError("first line\n" + "y" * 300)

    with pytest.raises(SystemExit) as exit_info:
        cli.run(failing, [])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"details: first line {'y' * 300}", cli.shorten(f"error: first line {'y' * 300}")]
    cli.verdict(True, "short and sweet")
    assert capsys.readouterr().err.splitlines() == ["PASS: short and sweet"]


def test_usage_errors_raise_through_run_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.ArgumentParser(prog="python -m scripts.example")
    parser.add_argument("--count", type=cli.int_range(1, 5), help="how many")

    def main(argv: list[str] | None) -> int:
        parser.parse_args(argv)
        return 0

    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, ["--count", "9"])
    assert exit_info.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: python -m scripts.example: argument --count: must be at most 5, not 9")


@pytest.mark.parametrize(("kind", "text", "message"), [
    (cli.int_range(0), "-1", "must be at least 0, not -1"),
    (cli.int_range(1, 10), "11", "must be at most 10, not 11"),
    (cli.int_range(1), "1.5", "invalid int value: '1.5'"),
    (cli.float_range(0), "-0.5", "must be at least 0, not -0.5"),
    (cli.float_range(0), "nan", "invalid float value: 'nan'"),
    (cli.float_range(0), "inf", "invalid float value: 'inf'"),
    (cli.existing_file, "/nonexistent/ca.pem", "no such file: /nonexistent/ca.pem"),
    (cli.existing_file, "/", "not a file but a directory: /"),
    (cli.existing_dir, "/nonexistent", "no such directory: /nonexistent"),
    (cli.existing_dir, "/etc/hostname", "not a directory: /etc/hostname"),
    (cli.file_to_write, "/nonexistent/summary.md", "no such directory: /nonexistent"),
    (cli.file_to_write, "/tmp", "a directory, not a file: /tmp"),
])
def test_argument_types_refuse_with_a_reason(kind: Any, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}$"):
        kind(text)


def test_argument_types_accept_what_they_should() -> None:
    assert cli.int_range(1, 32)("32") == 32 and cli.float_range(0)("0") == 0.0
    assert cli.existing_file("/etc/hostname") == "/etc/hostname" and cli.existing_dir("/tmp") == "/tmp"
    assert cli.file_to_write("/tmp/summary.md") == Path("/tmp/summary.md")


def test_the_smoke_summary_stays_short_however_many_checks_fail() -> None:
    error = "GET https://api.example.com/health/: " + "Failed to establish a new connection: [Errno 111] refused " * 5
    results = [CheckResult(name, False, 10, 6, error) for name in ("health", "api_health", "static", "https_redirect",
                                                                     "hsts", "database", "redis")]
    summary = checks.summary_line(results)
    assert len("FAIL: " + summary) <= SHORT_LINE
    assert summary == ("0/7 smoke checks passed; failed: health, api_health, static, https_redirect, hsts, database, "
                       "redis (see the checks' errors)")
    three = checks.summary_line(results[:3])
    assert len("FAIL: " + three) <= SHORT_LINE
    assert three.startswith("0/3 smoke checks passed; failed: health (Failed to establish a new connection")
    assert all(f"{r.name} (" in three for r in results[:3]) and three.count("...") == 3
    one = checks.summary_line([CheckResult("health", False, 10, 6, "GET https://api.example.com/health/ answered 500, "
                                                                     "expected 200"), CheckResult("static", True, 5, 1)])
    assert one == "1/2 smoke checks passed; failed: health (answered 500, expected 200)"


def test_smoke_retries_say_so_before_each_wait() -> None:
    lines: list[str] = []

    def refused() -> str:
        raise checks.CheckFailed("GET http://127.0.0.1:1/health/ answered 502, expected 200")

    result = checks.run_check(checks.Check("health", refused), checks.RetryPolicy(attempts=3, initial_wait=0, max_wait=0),
                              progress=lines.append)
    assert not result.ok and result.attempts == 3
    assert lines == [f"health: attempt {n}/3 failed (GET http://127.0.0.1:1/health/ answered 502, expected 200); "
                     "next attempt in 0.0 s" for n in (1, 2)]
