"""What the running virtualenv holds, read from the installed distributions' metadata."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def installed_closure(requirements: list[str]) -> dict[str, str]:
    """name -> installed version of the distributions and everything they require (markers
    evaluated for this interpreter, extras followed)."""
    found: dict[str, str] = {}
    queue = [Requirement(r) for r in requirements]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        if name in found and not requirement.extras:
            continue
        found[name] = metadata.version(name)
        environments = [{"extra": e} for e in requirement.extras] or [{"extra": ""}]
        for text in metadata.requires(name) or []:
            dependency = Requirement(text)
            if dependency.marker is None or any(dependency.marker.evaluate(e) for e in environments):
                queue.append(dependency)
    return found
