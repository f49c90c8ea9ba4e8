"""The scheduled check behind the "rotation overdue" alarm (components/alarms.py).

A rotation that silently stops (the function fails at every attempt, Secrets Manager gives up,
someone turns rotation off) leaves the secret older and older; nothing else notices, since a
CloudWatch alarm cannot wait 90 days for a missing datapoint. So a small function runs every
hour, asks Secrets Manager about each rotated secret and publishes one number,
`OverdueSecrets`: how many of them have rotation switched off, or were last rotated longer ago
than their schedule plus a margin (never rotated: whose first rotation, Secrets Manager's
NextRotationDate, is more than the margin in the past; a secret that gained rotation long after
it was created is not late from its creation date). The alarm fires on any overdue secret, and
on the check itself going silent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

METRIC_NAME = "OverdueSecrets"
# Secrets Manager rotates within the scheduled day; two days past the schedule is late.
DEFAULT_MARGIN_DAYS = 2


@dataclass(frozen=True)
class SecretAge:
    name: str
    rotation_enabled: bool
    schedule_days: Optional[int]
    last_rotated: datetime          # or created, when never rotated
    # Secrets Manager's NextRotationDate (it stays in the past when rotations fail), and whether
    # the secret ever rotated: a secret that gained rotation long after it was created (the
    # generated secrets of an older stack) is due from when rotation was switched on, not from
    # its creation.
    next_rotation: Optional[datetime] = None
    rotated_before: bool = True

    def overdue(self, now: datetime, margin_days: int) -> Optional[str]:
        """Why the secret is overdue, or None."""
        if not self.rotation_enabled or not self.schedule_days:
            return "rotation is off"
        if not self.rotated_before and self.next_rotation is not None:
            late = now - self.next_rotation
            if late > timedelta(days=margin_days):
                return (f"first rotation was due {late.days} days ago, on {self.next_rotation:%Y-%m-%d} "
                        f"(+ {margin_days} days margin)")
            return None
        age = now - self.last_rotated
        if age > timedelta(days=self.schedule_days + margin_days):
            return f"last rotated {age.days} days ago (schedule {self.schedule_days} days + {margin_days})"
        return None


def secret_age(sm: Any, secret_id: str) -> SecretAge:
    described = sm.describe_secret(SecretId=secret_id)
    rules = described.get("RotationRules") or {}
    return SecretAge(name=described.get("Name", secret_id), rotation_enabled=bool(described.get("RotationEnabled")),
                     schedule_days=rules.get("AutomaticallyAfterDays"),
                     last_rotated=described.get("LastRotatedDate") or described["CreatedDate"],
                     next_rotation=described.get("NextRotationDate"),
                     rotated_before=bool(described.get("LastRotatedDate")))


def check_rotation(sm: Any, cloudwatch: Any, secret_ids: Sequence[str], *, namespace: str, now: datetime,
                   margin_days: int = DEFAULT_MARGIN_DAYS) -> dict[str, Any]:
    """Publish OverdueSecrets and answer {"overdue": {name: reason}, "checked": n}."""
    overdue: dict[str, str] = {}
    for secret_id in secret_ids:
        age = secret_age(sm, secret_id)
        reason = age.overdue(now, margin_days)
        if reason:
            overdue[age.name] = reason
    cloudwatch.put_metric_data(Namespace=namespace, MetricData=[
        {"MetricName": METRIC_NAME, "Value": float(len(overdue)), "Unit": "Count", "Timestamp": now}])
    return {"ok": not overdue, "checked": len(secret_ids), "overdue": overdue}
