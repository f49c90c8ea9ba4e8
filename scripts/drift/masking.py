"""Secret handling shared by both drift modes.

Pulumi marks a secret value, in a stack export and in engine events alike, by wrapping it in an
object carrying a fixed signature key: `{"4dabf18193072939515e22adb298388d":
"1b47061264138c4ac30d75fd1eb44270", "ciphertext": ...}` (exports) or `..., "plaintext": "<JSON>"}`
(engine events with secrets shown). Everything here replaces such objects with SECRET and hands
any plaintext to `scripts.lib.cli.masker`, so that the same value is masked wherever else it
shows up (an old value of a property that only later became secret, a diagnostic message).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from scripts.lib import cli

SECRET = "[secret]"  # noqa: S105 - the placeholder Pulumi itself prints, not a credential
SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 - Pulumi's secret signature, public

# Property names whose string values are secrets whatever the state says: provider schemas do not
# mark every credential-bearing field secret (issue pulumi/pulumi#4058 and friends). Matched on
# the name lower-cased with separators removed; "secretArn"/"secretId" are references, not secrets.
_SECRET_NAME = re.compile(
    r"password|passwd|passphrase|token|privatekey|apikey|secretkey|accesskey|credential|connectionstring"
    r"|secret(string|value|binary)?$")


def is_secret_object(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def secret_looking_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(re.sub(r"[^a-z0-9]", "", name.lower())))


def _register_plaintext(plaintext: Any, depth: int = 0) -> None:
    """Register a secret's plain text, and every string inside it when it is JSON (a Secrets
    Manager secret string is a JSON document inside a JSON-encoded plaintext)."""
    if not isinstance(plaintext, str) or depth > 3:
        return
    cli.masker.add(plaintext)
    if depth and not plaintext.lstrip().startswith(("{", "[", '"')):
        return
    try:
        decoded = json.loads(plaintext)
    except ValueError:
        return
    for text in _strings(decoded):
        _register_plaintext(text, depth + 1)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def contains_secret(value: Any) -> bool:
    if value == SECRET or is_secret_object(value):
        return True
    if isinstance(value, dict):
        return any(contains_secret(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_secret(v) for v in value)
    return False


def scrub(value: Any) -> Any:
    """`value` with every secret object replaced by SECRET (plaintext registered with the masker)
    and every string under a secret-looking property name replaced too."""
    if is_secret_object(value):
        _register_plaintext(value.get("plaintext"))
        return SECRET
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            cleaned = scrub(item)
            out[key] = conceal(cleaned) if secret_looking_name(str(key)) else cleaned
        return out
    if isinstance(value, list):
        return [scrub(item) for item in value]
    return value


def conceal(value: Any) -> Any:
    """Every string inside `value` becomes SECRET (and is registered with the masker); other
    scalars (booleans, numbers) carry no secret and stay, so that e.g. a flag's drift stays visible."""
    if isinstance(value, str):
        if value != SECRET:
            cli.masker.add(value)
        return SECRET
    if is_secret_object(value):
        return scrub(value)
    if isinstance(value, dict):
        return {key: conceal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [conceal(item) for item in value]
    return value
