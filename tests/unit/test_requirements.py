"""requirements.txt pins the whole dependency closure, so every machine resolves the same one.

The deploying machine's virtualenv is what the Lambda package is built from and what the
monitoring host's hashed lock is compared with: an unpinned transitive dependency would let a
release published upstream change the package (and rerun the release steps) or split CI from
the host.
"""

from __future__ import annotations

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.mock_engine import ROOT_DIR
from tests.dependencies import installed_closure

REQUIREMENTS = ROOT_DIR / "requirements.txt"


TRANSITIVE_MARKER = "# --- what those pull in"


def _pins(text: str) -> dict[str, Requirement]:
    pins: dict[str, Requirement] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = requirement
    return pins


def test_every_requirement_is_an_exact_pin_listed_once() -> None:
    names: list[str] = []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            assert str(requirement.specifier).startswith("==") and "," not in str(requirement.specifier), line
            names.append(canonicalize_name(requirement.name))
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_the_pins_are_exactly_the_closure_of_the_direct_requirements() -> None:
    """Everything the direct requirements pull in is listed, at the version the virtualenv
    holds, and nothing else is: a missing transitive pin or a left-over one fails here, named."""
    direct_text, _, _ = REQUIREMENTS.read_text().partition(TRANSITIVE_MARKER)
    direct = _pins(direct_text)
    pinned = {name: str(req.specifier).removeprefix("==") for name, req in _pins(REQUIREMENTS.read_text()).items()}
    closure = installed_closure([str(req).split("==")[0] for req in direct.values()])
    unpinned = {name: version for name, version in closure.items() if name not in pinned}
    assert not unpinned, f"installed but not pinned in requirements.txt: {unpinned}"
    left_over = sorted(set(pinned) - set(closure))
    assert not left_over, f"pinned but nothing needs them: {left_over}"
    drifted = {name: (pinned[name], version) for name, version in closure.items() if pinned[name] != version}
    assert not drifted, f"pinned vs installed (reinstall the venv from requirements.txt): {drifted}"
