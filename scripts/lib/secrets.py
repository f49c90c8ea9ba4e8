"""Reading JSON secrets from Secrets Manager. Values are returned to the caller only; they are
registered with the masker so no log line or report can print them."""

from __future__ import annotations

import json
from typing import Any, Optional

from scripts.lib import aws
from scripts.lib.cli import ScriptError, masker


def read_secret_json(secret_id: str, *, stage: str = "AWSCURRENT", version_id: Optional[str] = None,
                     client: Any = None, endpoint_url: Optional[str] = None,
                     region: Optional[str] = None) -> dict[str, Any]:
    sm = client or aws.client("secretsmanager", region=region, endpoint_url=endpoint_url)
    kwargs: dict[str, Any] = {"SecretId": secret_id}
    if version_id:
        kwargs["VersionId"] = version_id
    else:
        kwargs["VersionStage"] = stage
    try:
        response = sm.get_secret_value(**kwargs)
    except sm.exceptions.ResourceNotFoundException:
        raise ScriptError(f"secret {secret_id} (stage {stage}) does not exist or has no value") from None
    try:
        value = json.loads(response["SecretString"])
    except (KeyError, json.JSONDecodeError):
        raise ScriptError(f"secret {secret_id} does not hold a JSON document") from None
    if not isinstance(value, dict):
        raise ScriptError(f"secret {secret_id} does not hold a JSON object")
    for key, item in value.items():
        if isinstance(item, str) and key.lower() in {"password", "secret_key", "token", "auth_token"}:
            masker.add(item)
    return value
