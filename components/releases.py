"""Pinned downloads of the hosts (components/templates/releases.yaml): one place for versions,
URLs and SHA-256 sums, read by the API hosts' and the monitoring host's bootstrap."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

RELEASES_FILE = Path(__file__).resolve().parent / "templates" / "releases.yaml"


@cache
def pinned_releases() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = yaml.safe_load(RELEASES_FILE.read_text())
    for name, release in data.items():
        if not str(release["url"]).startswith("https://"):
            raise ValueError(f"{name}: downloads must use HTTPS")
        if not re.fullmatch(r"[0-9a-f]{64}", str(release["sha256"])):
            raise ValueError(f"{name}: sha256 must be 64 hex digits")
    return data
