"""Engine drift: a read-only refresh preview of a stack through Pulumi's Automation API.

`Stack.preview_refresh` runs `pulumi refresh --preview-only`: the engine reads every resource
from the cloud and reports what a refresh would change, without writing the state. The step
events it streams (ResourcePreEvent / ResOutputsEvent with StepEventMetadata: op, urn, type,
diffs, detailed_diff, old/new StepEventStateMetadata) carry the old (state) and new (live)
property values, secrets included in plain text when the CLI shows secrets. `drift_from_events`
turns them into findings and is a pure function: no CLI, no network, unit-tested directly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

from pulumi.automation import events as auto_events

from scripts.drift import masking
from scripts.drift.report import EngineChange, EngineFinding, EngineReport
from scripts.lib import cli

PROJECT_DIR = Path(__file__).resolve().parents[2]

# Refresh steps report what happened to the state's view of a resource: "refresh"/"same"/"read"
# on their own say nothing; "update" and "delete" (resource gone) are drift.
_NEUTRAL_OPS = {"same", "read", "refresh"}
_PATH_TOKEN = re.compile(r'\[(\d+)\]|\["((?:[^"\\]|\\.)*)"\]|\.?([^.\[\]]+)')

EventLike = Union[auto_events.EngineEvent, Mapping[str, Any]]


def _event(value: EventLike) -> auto_events.EngineEvent:
    if isinstance(value, auto_events.EngineEvent):
        return value
    return auto_events.EngineEvent.from_json(dict(value))


def split_path(path: str) -> list[Union[str, int]]:
    """Engine property paths: `ingress[0].cidrBlocks[1]`, `tags["kubernetes.io/role"]`, `a.b`."""
    parts: list[Union[str, int]] = []
    for index, quoted, plain in _PATH_TOKEN.findall(path):
        if index:
            parts.append(int(index))
        elif quoted:
            parts.append(json.loads(f'"{quoted}"'))
        elif plain:
            parts.append(plain)
    return parts


_MISSING = object()


def lookup(bag: Any, path: list[Union[str, int]]) -> Any:
    for part in path:
        if masking.is_secret_object(bag) or bag == masking.SECRET:
            return bag  # the whole value is secret; so is every part of it
        if isinstance(part, int) and isinstance(bag, list) and 0 <= part < len(bag):
            bag = bag[part]
        elif isinstance(part, str) and isinstance(bag, Mapping) and part in bag:
            bag = bag[part]
        else:
            return _MISSING
    return bag


def _state_bag(state: Optional[auto_events.StepEventStateMetadata]) -> Mapping[str, Any]:
    if state is None:
        return {}
    return state.outputs if state.outputs is not None else (state.inputs or {})


def _diff_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Leaf paths where two property maps differ, for events that carry no detailed diff."""
    if isinstance(old, Mapping) and isinstance(new, Mapping) and not masking.is_secret_object(old) \
            and not masking.is_secret_object(new):
        paths = []
        for key in sorted(set(old) | set(new), key=str):
            child = f"{prefix}.{key}" if prefix else str(key)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
                child = f"{prefix}[{json.dumps(str(key))}]"
            paths.extend(_diff_paths(old.get(key, _MISSING), new.get(key, _MISSING), child))
        return paths
    return [] if old == new else [prefix]


def _masked(value: Any, path: list[Union[str, int]], secret: bool) -> Any:
    """What may be printed of one side of a property change. `secret`: the state marks the
    property secret, or either side holds a secret there (an old plain-text value of a property
    that is secret now is just as secret)."""
    if value is _MISSING:
        return None
    if secret:
        masking.conceal(masking.scrub(value))  # hands any plain text to the masker
        return masking.SECRET
    if any(isinstance(p, str) and masking.secret_looking_name(p) for p in path):
        return masking.conceal(masking.scrub(value))
    return masking.scrub(value)


def _register_secret_values(bag: Mapping[str, Any], secret_names: Iterable[str]) -> None:
    """Plain-text values of properties the state marks secret go to the masker, so that they
    are masked wherever else they might appear (messages, other properties)."""
    for name in secret_names:
        if name in bag:
            masking.conceal(masking.scrub(bag[name]))


def _op(metadata: auto_events.StepEventMetadata) -> str:
    return metadata.op.value if hasattr(metadata.op, "value") else str(metadata.op)


def _operation(metadata: auto_events.StepEventMetadata, changes: list[EngineChange]) -> Optional[str]:
    op = _op(metadata)
    if op == "delete" or (op in _NEUTRAL_OPS and metadata.old is not None and metadata.new is None):
        return "delete"
    if op in _NEUTRAL_OPS:
        return "update" if changes else None
    return op


def drift_from_events(events: Iterable[EventLike],
                      secret_paths: Optional[Mapping[str, Iterable[str]]] = None,
                      stack: str = "") -> EngineReport:
    """Findings from the engine events of a refresh preview, secrets masked.

    `secret_paths`: URN -> top-level property names the state holds as secrets (from the stack
    export: secret-wrapped values and additionalSecretOutputs)."""
    secret_paths = secret_paths or {}
    latest: dict[str, auto_events.StepEventMetadata] = {}
    has_result: set[str] = set()
    failed: set[str] = set()
    order: list[str] = []
    report = EngineReport(stack=stack)
    for raw in events:
        event = _event(raw)
        if event.res_op_failed_event is not None:
            failed.add(event.res_op_failed_event.metadata.urn)
        step = event.res_outputs_event or event.resource_pre_event
        if step is not None:
            metadata = step.metadata
            if metadata.urn not in latest:
                order.append(metadata.urn)
            # The outputs event comes after the pre event and holds the step's result: it wins.
            if event.res_outputs_event is not None:
                latest[metadata.urn] = metadata
                has_result.add(metadata.urn)
            elif metadata.urn not in has_result:
                latest[metadata.urn] = metadata
        if event.summary_event is not None:
            report.resource_changes = {str(getattr(k, "value", k)): v for k, v in event.summary_event.resource_changes.items()}
        if event.diagnostic_event is not None and event.diagnostic_event.severity in ("error", "warning"):
            report.diagnostics.append(event.diagnostic_event.message.strip())

    for urn in order:
        metadata = latest[urn]
        if metadata.type.startswith("pulumi:providers:") or metadata.type == "pulumi:pulumi:Stack":
            continue
        if urn in failed:
            report.diagnostics.append(f"could not read {urn}: see the error above")
            continue
        if urn not in has_result and _op(metadata) in _NEUTRAL_OPS:
            continue  # a step announced but never finished says nothing about the resource
        secret_names = set(secret_paths.get(urn, ()))
        old_bag, new_bag = _state_bag(metadata.old), _state_bag(metadata.new)
        old_inputs = (metadata.old.inputs if metadata.old else None) or {}
        new_inputs = (metadata.new.inputs if metadata.new else None) or {}
        _register_secret_values(old_bag, secret_names)
        _register_secret_values(new_bag, secret_names)

        if metadata.detailed_diff:
            paths = {p: getattr(d.diff_kind, "value", str(d.diff_kind)) for p, d in metadata.detailed_diff.items()}
        elif metadata.diffs:
            paths = {p: "update" for p in metadata.diffs}
        elif metadata.new is not None:
            paths = {p: "update" for p in _diff_paths(old_bag, new_bag) if p}
        else:
            paths = {}

        changes = []
        for dotted, kind in sorted(paths.items()):
            parts = split_path(dotted)
            old_value = lookup(old_bag, parts)
            if old_value is _MISSING:
                old_value = lookup(old_inputs, parts)  # a diff over inputs names input paths
            new_value = lookup(new_bag, parts) if metadata.new is not None else _MISSING
            if new_value is _MISSING and metadata.new is not None:
                new_value = lookup(new_inputs, parts)
            secret = (bool(parts) and str(parts[0]) in secret_names) or any(
                v is not _MISSING and masking.contains_secret(v) for v in (old_value, new_value))
            changes.append(EngineChange(dotted, kind, _masked(old_value, parts, secret),
                                        _masked(new_value, parts, secret)))
        operation = _operation(metadata, changes)
        if operation is None:
            continue
        resource_id = (metadata.old.id if metadata.old else "") or (metadata.new.id if metadata.new else "")
        report.drifted_resources.append(EngineFinding(urn=urn, type=metadata.type, operation=operation,
                                                      id=resource_id or "", changes=changes))
    report.diagnostics = [cli.masker(line) for line in report.diagnostics]
    return report


# --- running it --------------------------------------------------------------------------


def _pulumi_home() -> Path:
    return Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")


def _project_backend(work_dir: Path) -> Optional[str]:
    project_file = work_dir / "Pulumi.yaml"
    try:
        import yaml

        project = yaml.safe_load(project_file.read_text()) or {}
    except (OSError, ValueError):
        return None
    backend = project.get("backend") if isinstance(project, dict) else None
    return backend.get("url") if isinstance(backend, dict) else None


def backend_configured(work_dir: Path) -> bool:
    if os.environ.get("PULUMI_BACKEND_URL") or os.environ.get("PULUMI_ACCESS_TOKEN") or _project_backend(work_dir):
        return True
    try:
        credentials = json.loads((_pulumi_home() / "credentials.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(credentials.get("current"))


def aws_credentials_available() -> bool:
    import boto3

    try:
        return boto3.Session().get_credentials() is not None
    except Exception:  # noqa: BLE001 - a broken profile is as good as none for this check
        return False


def preflight(stack: str, work_dir: Path) -> None:
    """Everything the Automation API would otherwise fail on with a long CommandError."""
    if not (work_dir / "Pulumi.yaml").is_file():
        raise cli.ScriptError(f"--work-dir {work_dir}: no Pulumi.yaml (not a Pulumi project directory)",
                              cli.EXIT_USAGE)
    if shutil.which("pulumi") is None:
        raise cli.ScriptError("the pulumi CLI is not on PATH: install it (https://www.pulumi.com/docs/install/) "
                              "or use the CLI-free `python -m scripts.drift scan --state EXPORT.json`")
    if not backend_configured(work_dir):
        raise cli.ScriptError("no Pulumi backend: run `pulumi login` (or set PULUMI_BACKEND_URL, or "
                              "PULUMI_ACCESS_TOKEN for Pulumi Cloud)")
    stack_file = work_dir / f"Pulumi.{stack}.yaml"
    if stack_file.is_file() and "encryptionsalt:" in stack_file.read_text() \
            and not (os.environ.get("PULUMI_CONFIG_PASSPHRASE") is not None or os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")):
        raise cli.ScriptError(f"stack {stack} uses the passphrase secrets provider: set PULUMI_CONFIG_PASSPHRASE "
                              "or PULUMI_CONFIG_PASSPHRASE_FILE")
    if not aws_credentials_available():
        raise cli.ScriptError("no AWS credentials found (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                              "or an instance/OIDC role): the refresh reads every resource from AWS")


def _command_error_line(err: Exception) -> str:
    """The first meaningful line of a CLI failure (its stderr), masked."""
    text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    stderr_start = next((i for i, line in enumerate(lines) if line.startswith("stderr:")), None)
    candidates = lines[stderr_start:] if stderr_start is not None else lines
    for line in candidates:
        line = line.removeprefix("stderr:").strip()
        if line.lower().startswith("error:"):
            return cli.masker(line[6:].strip())
    return cli.masker(candidates[0].removeprefix("stderr:").strip() if candidates else err.__class__.__name__)


def run_engine(stack_name: str, work_dir: Path = PROJECT_DIR) -> EngineReport:
    preflight(stack_name, work_dir)
    from pulumi import automation as auto

    collected: list[auto_events.EngineEvent] = []
    try:
        stack = auto.select_stack(stack_name=stack_name, work_dir=str(work_dir))
        # The export is read-only and keeps secrets encrypted: it only tells which properties are secret.
        secrets = masking_paths_from_export(stack.export_stack().deployment)
        cli.info(f"refresh preview of stack {stack_name} (read-only) ...")
        stack.preview_refresh(on_event=collected.append, color="never", suppress_outputs=True,
                              suppress_progress=True, on_output=lambda _line: None)
    except auto.StackNotFoundError:
        raise cli.ScriptError(f"stack {stack_name} not found in the current backend") from None
    except auto.CommandError as err:
        raise cli.ScriptError(f"pulumi refresh --preview-only failed: {_command_error_line(err)}") from None
    except auto.InvalidVersionError as err:
        raise cli.ScriptError(f"pulumi CLI too old for the Automation API: {err}") from None
    except RuntimeError as err:
        raise cli.ScriptError(f"refresh preview ended without a summary: {err}") from None
    report = drift_from_events(collected, secrets, stack=stack_name)
    report.work_dir = str(work_dir)
    return report


def masking_paths_from_export(deployment: Optional[Mapping[str, Any]]) -> dict[str, frozenset[str]]:
    from scripts.drift.state import secret_paths

    return secret_paths(deployment or {"resources": []})
