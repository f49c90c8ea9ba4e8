"""Rotation of the generated secrets that only their readers use: the Django `SECRET_KEY` (the
app secret, `psychology-api/<stack>/app`) and the Grafana admin password
(`psychology-api/<stack>/grafana`), with the four steps of scripts/dbops/rotation.py.

Nothing outside Secrets Manager has to change when a new version is made: the API hosts and
the monitoring host read AWSCURRENT and apply it themselves (daily / hourly refresh timers). So
setSecret changes nothing, and the value of the design lies in the overlap:

Django: `{"SECRET_KEY": current, "SECRET_KEY_FALLBACKS": [next, previous]}`. Django (4.1+) signs
with SECRET_KEY and accepts signatures (sessions' auth hashes, signed cookies, password-reset
links) made with any key of SECRET_KEY_FALLBACKS. The next key is announced a whole rotation
period before it signs anything: a rotation makes the announced key current, keeps the
current one as the previous, and announces a new one. Until every host has refreshed, hosts on
the old version (signing with the old key, accepting the new one as announced) and hosts on
the new version (signing with the new key, accepting the old one as previous) accept each
other's signatures, so no session is lost in the mixed fleet. At most two fallbacks. A version
without an announced key (one written before this scheme) rotates once without changing the
signing key: it only announces one; the signing key changes at the rotation after.

Grafana: `{"admin_user", "admin_password"}`: a new password of 32 letters and digits; the
monitoring host's psychology-grafana-admin-password timer applies AWSCURRENT with
`grafana cli admin reset-admin-password` within the hour. Until then AWSPREVIOUS logs in.

The keys and passwords come from GetRandomPassword. Keys exclude what an environment file, a
shell or the comma-separated SECRET_KEY_FALLBACKS variable would need to quote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from scripts.dbops.rotation import RotationError, SecretRotation, StepResult
from scripts.lib.cli import masker

DJANGO_KEY_LENGTH = 64
# Django refuses keys shorter than 50 characters or with fewer than 5 distinct ones (check --deploy).
DJANGO_KEY_MIN_LENGTH = 50
DJANGO_KEY_EXCLUDE = "\"'\\`$, "
MAX_FALLBACKS = 2
GRAFANA_PASSWORD_LENGTH = 32


def is_django_document(doc: dict[str, Any]) -> bool:
    return "SECRET_KEY" in doc


def is_grafana_document(doc: dict[str, Any]) -> bool:
    return "admin_password" in doc and "admin_user" in doc


def fallbacks_of(doc: dict[str, Any], label: str) -> list[str]:
    value = doc.get("SECRET_KEY_FALLBACKS") or []
    if not isinstance(value, list) or not all(isinstance(key, str) and key for key in value):
        raise RotationError(f"the {label} version's SECRET_KEY_FALLBACKS is not a list of keys")
    return list(value)


def next_django_document(current: dict[str, Any], new_key: str) -> dict[str, Any]:
    """The version after `current`: the announced key signs, the current one is the previous,
    `new_key` is announced. Without an announced key, `new_key` is only announced."""
    key = str(current["SECRET_KEY"])
    fallbacks = fallbacks_of(current, "AWSCURRENT")
    announced = fallbacks[0] if fallbacks and fallbacks[0] != key else None
    if announced is None:
        return {**current, "SECRET_KEY": key, "SECRET_KEY_FALLBACKS": [new_key]}
    return {**current, "SECRET_KEY": announced, "SECRET_KEY_FALLBACKS": [new_key, key]}


def check_django_document(pending: dict[str, Any], current: dict[str, Any]) -> str:
    """Why `pending` may follow `current` (a short description), or RotationError."""
    key = pending.get("SECRET_KEY")
    if not isinstance(key, str) or len(key) < DJANGO_KEY_MIN_LENGTH or len(set(key)) < 5:
        raise RotationError(f"the pending SECRET_KEY is not a key of at least {DJANGO_KEY_MIN_LENGTH} characters")
    fallbacks = fallbacks_of(pending, "pending")
    if len(fallbacks) > MAX_FALLBACKS or key in fallbacks or len(set(fallbacks)) != len(fallbacks):
        raise RotationError(f"the pending SECRET_KEY_FALLBACKS must hold at most {MAX_FALLBACKS} distinct keys "
                            "other than SECRET_KEY")
    if any(bad in k for k in (key, *fallbacks) for bad in DJANGO_KEY_EXCLUDE):
        raise RotationError("a pending key holds a character the hosts' environment file cannot carry")
    current_key = str(current.get("SECRET_KEY") or "")
    # The overlap: hosts still on the current version must accept what the new one signs, and
    # hosts on the new version must accept what the current one signed.
    if key != current_key and key not in fallbacks_of(current, "AWSCURRENT"):
        raise RotationError("the pending SECRET_KEY was never announced in the current version's fallbacks: "
                            "hosts not yet refreshed would refuse what it signs")
    if current_key and current_key != key and current_key not in fallbacks:
        raise RotationError("the pending version drops the current SECRET_KEY: sessions it signed would be lost")
    return f"SECRET_KEY and {len(fallbacks)} fallback(s)"


def check_grafana_document(pending: dict[str, Any], current: dict[str, Any]) -> str:
    password = pending.get("admin_password")
    if not isinstance(password, str) or len(password) < GRAFANA_PASSWORD_LENGTH or not password.isalnum():
        raise RotationError(f"the pending admin_password is not {GRAFANA_PASSWORD_LENGTH}+ letters and digits")
    if pending.get("admin_user") != current.get("admin_user"):
        raise RotationError("the pending version changes admin_user; only the password rotates")
    return f"admin password for {pending['admin_user']}"


def mask_values(doc: dict[str, Any]) -> dict[str, Any]:
    """Registers the document's keys and password with the masker, so no message shows them."""
    for value in (doc.get("SECRET_KEY"), doc.get("admin_password"), *(doc.get("SECRET_KEY_FALLBACKS") or [])):
        if isinstance(value, str) and value:
            masker.add(value)
    return doc


class GeneratedSecretRotation(SecretRotation):
    def _current(self) -> tuple[str, dict[str, Any]]:
        version, doc = super()._current()
        return version, mask_values(doc)

    def _pending(self) -> dict[str, Any]:
        return mask_values(super()._pending())

    def _kind(self, doc: dict[str, Any], label: str) -> str:
        if is_django_document(doc):
            return "django"
        if is_grafana_document(doc):
            return "grafana"
        raise RotationError(f"the {label} version is neither a Django secret (SECRET_KEY) nor Grafana's "
                            "(admin_user, admin_password)")

    def _random(self, avoid: set[str], **request: Any) -> str:
        for _ in range(3):
            value = str(self.sm.get_random_password(**request)["RandomPassword"])
            if value not in avoid:
                masker.add(value)
                return value
        raise RotationError("GetRandomPassword kept returning a value already in use")

    def stale_pending(self, pending: dict[str, Any], current: dict[str, Any]) -> Optional[str]:
        """A staged value that copies the current one (what a RotateSecret without immediate
        rotation leaves) is made again: it would rotate nothing."""
        if pending == current:
            return "a copy of the current value"
        if is_grafana_document(current):
            if not pending.get("admin_password") or pending.get("admin_password") == current.get("admin_password"):
                return "no new Grafana admin password"
            return None
        if not pending.get("SECRET_KEY"):
            return "no SECRET_KEY"
        return None

    def create_secret(self) -> StepResult:
        _, current = self._current()
        kind = self._kind(current, "AWSCURRENT")
        if self._reuse_pending(current):
            return StepResult("createSecret", self.token, "already-done")
        if kind == "django":
            known = {str(current["SECRET_KEY"]), *fallbacks_of(current, "AWSCURRENT")}
            new_key = self._random(known, PasswordLength=DJANGO_KEY_LENGTH, ExcludeCharacters=DJANGO_KEY_EXCLUDE,
                                   IncludeSpace=False, RequireEachIncludedType=True)
            new = next_django_document(current, new_key)
            detail = ("announced the next SECRET_KEY" if new["SECRET_KEY"] == current["SECRET_KEY"]
                      else "the announced SECRET_KEY signs; a new one is announced")
        else:
            password = self._random({str(current["admin_password"])}, PasswordLength=GRAFANA_PASSWORD_LENGTH,
                                    ExcludePunctuation=True, IncludeSpace=False, RequireEachIncludedType=True)
            new, detail = {**current, "admin_password": password}, "a new Grafana admin password"
        self._put_pending(new)
        self.log(f"createSecret: staged version {self.token}: {detail}")
        return StepResult("createSecret", self.token, "done", detail)

    def set_secret(self) -> StepResult:
        pending = self._pending()
        kind = self._kind(pending, f"pending {self.token}")
        self.log(f"setSecret: nothing to change outside Secrets Manager ({kind}: its hosts apply AWSCURRENT)")
        return StepResult("setSecret", self.token, "done", "applied by the hosts' refresh")

    def test_secret(self) -> StepResult:
        pending = self._pending()
        _, current = self._current()
        kind = self._kind(pending, f"pending {self.token}")
        if kind != self._kind(current, "AWSCURRENT"):
            raise RotationError("the pending version is not the same kind of secret as the current one")
        check: Callable[[dict[str, Any], dict[str, Any]], str] = (
            check_django_document if kind == "django" else check_grafana_document)
        detail = check(pending, current)
        self.log(f"testSecret: version {self.token} holds {detail}")
        return StepResult("testSecret", self.token, "done", detail)
