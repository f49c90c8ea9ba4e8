"""boto3 clients with one place for region, endpoint override (moto, LocalStack, VPC
endpoints), timeouts and retries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import boto3
from botocore.config import Config

DEFAULT_REGION = "eu-central-1"

_CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=60,
    retries={"max_attempts": 5, "mode": "adaptive"},
)


def region_name(region: Optional[str] = None) -> str:
    return region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def client(service: str, *, region: Optional[str] = None, endpoint_url: Optional[str] = None,
           read_timeout: Optional[int] = None, total_attempts: Optional[int] = None) -> Any:
    """A boto3 client. `endpoint_url` (or AWS_ENDPOINT_URL, which boto3 reads itself) points
    it at moto's server in tests. `read_timeout` / `total_attempts` override the defaults for
    calls that legitimately take long (a synchronous Lambda invoke) or must not be repeated
    (`total_attempts=1`: botocore's `max_attempts` counts retries, so 1 there means two calls)."""
    config = _CLIENT_CONFIG
    if read_timeout is not None or total_attempts is not None:
        retries: Any = ({"mode": "standard", "total_max_attempts": total_attempts} if total_attempts is not None
                        else {"mode": "standard", "max_attempts": 5})
        config = config.merge(Config(
            read_timeout=read_timeout if read_timeout is not None else _CLIENT_CONFIG.read_timeout, retries=retries))
    return boto3.client(service, region_name=region_name(region), endpoint_url=endpoint_url or None,
                        config=config)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """AWS API failures as one-line ScriptErrors (code and message, no traceback)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from scripts.lib.cli import ScriptError, masker

    try:
        yield
    except ClientError as err:
        error = err.response.get("Error", {})
        operation = getattr(err, "operation_name", "") or "AWS call"
        raise ScriptError(masker(f"{operation}: {error.get('Code', 'error')}: {error.get('Message', str(err))}")) from None
    except BotoCoreError as err:
        raise ScriptError(masker(str(err).splitlines()[0])) from None
