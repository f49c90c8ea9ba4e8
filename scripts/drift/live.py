"""Live AWS reads for the account scan: counted, memoized, paginated.

Every request goes through a client made by `scripts.lib.aws.client` with a botocore
`before-call` hook that counts it (per `service.Operation`), so the report can show that the
number of calls follows the number of resource types. Reads are memoized: two resource types
that need the same listing (a secret and its rotation, the security groups and their rules)
share one request.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Optional

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from scripts.lib import aws, cli

# EC2 accepts at most 200 values in one filter; more values mean one more request per 200.
FILTER_VALUE_LIMIT = 200


class ApiCounter:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            self.calls[f"{model.service_model.service_name}.{model.name}"] += 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_operation": dict(sorted(self.calls.items()))}


def _freeze(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str)


class Live:
    """AWS clients for one region/endpoint, with call counting and memoized reads."""

    def __init__(self, region: str, endpoint_url: Optional[str] = None,
                 client_factory: Callable[..., Any] = aws.client) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.counter = ApiCounter()
        self._clients: dict[str, Any] = {}
        self._memo: dict[tuple[str, str, str], Any] = {}
        self._client_factory = client_factory

    def client(self, service: str) -> Any:
        if service not in self._clients:
            client = self._client_factory(service, region=self.region, endpoint_url=self.endpoint_url)
            client.meta.events.register("before-call", self.counter)
            self._clients[service] = client
        return self._clients[service]

    def _guard(self, service: str, operation: str, fn: Callable[[], Any],
               tolerate: Iterable[str] = ()) -> Any:
        try:
            return fn()
        except NoCredentialsError:
            raise cli.ScriptError("no AWS credentials found (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                                  "or an instance/OIDC role)") from None
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in set(tolerate):
                return err
            message = err.response.get("Error", {}).get("Message", "")
            raise cli.ScriptError(f"{service}.{operation} failed: {code}: {message}".rstrip(": ")) from None
        except BotoCoreError as err:
            raise cli.ScriptError(f"{service}.{operation} failed: {err}") from None

    def pages(self, service: str, operation: str, result_key: str, **params: Any) -> list[Any]:
        """All items of a paginated listing (one request per page), memoized."""
        key = (service, f"pages:{operation}:{result_key}", _freeze(params))
        if key not in self._memo:
            client = self.client(service)

            def fetch() -> list[Any]:
                items: list[Any] = []
                if client.can_paginate(operation):
                    for page in client.get_paginator(operation).paginate(**params):
                        items.extend(page.get(result_key) or [])
                else:
                    items.extend(getattr(client, operation)(**params).get(result_key) or [])
                return items

            self._memo[key] = self._guard(service, operation, fetch)
        return list(self._memo[key])

    def call(self, service: str, operation: str, tolerate: Iterable[str] = (), **params: Any) -> Any:
        """One request, memoized. Error codes in `tolerate` come back as the ClientError instead
        of ending the scan (e.g. "no public-access block configured")."""
        key = (service, operation, _freeze(params))
        if key not in self._memo:
            client = self.client(service)
            self._memo[key] = self._guard(service, operation, lambda: getattr(client, operation)(**params),
                                          tolerate)
        return self._memo[key]

    def filtered_pages(self, service: str, operation: str, result_key: str, filter_name: str,
                       values: Iterable[str], **params: Any) -> list[Any]:
        """A listing filtered server-side on `filter_name` in `values` (EC2 style Filters)."""
        values = sorted(set(values))
        items: list[Any] = []
        for start in range(0, len(values), FILTER_VALUE_LIMIT):
            chunk = values[start:start + FILTER_VALUE_LIMIT]
            items.extend(self.pages(service, operation, result_key,
                                    Filters=[{"Name": filter_name, "Values": chunk}], **params))
        return items


def tags_of(items: Optional[Iterable[Mapping[str, Any]]]) -> dict[str, str]:
    """AWS's [{"Key": k, "Value": v}] tag lists as a dict."""
    return {t.get("Key", ""): t.get("Value", "") for t in items or [] if "Key" in t}


def chunks(values: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]
