"""Command-line conventions shared by every script.

* `--json` prints exactly one JSON document on stdout; progress and human text go to stderr.
* Failures end with one line `error: ...` on stderr and a non-zero exit code.
* Known secret values are masked in everything the scripts print.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, Optional

from rich.console import Console

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Human output; stderr so that stdout stays clean for --json.
console = Console(stderr=True, highlight=False, soft_wrap=True)


class ScriptError(Exception):
    """A failure with a message fit for one line, and the exit code to end with."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


class Masker:
    """Replaces registered secret values (and password fields in URLs) with ***."""

    _URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?P<at>@)")
    _KV_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<password>'[^']*'|\S+)", re.IGNORECASE)

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: Optional[str]) -> None:
        if value and len(value) >= 4:
            self._values.add(value)

    def __call__(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, "***")
        text = self._URL_PASSWORD.sub(lambda m: f"{m['scheme']}***{m['at']}", text)
        return self._KV_PASSWORD.sub(lambda m: f"{m['key']}***", text)

    def data(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value


masker = Masker()


def add_common_arguments(parser: argparse.ArgumentParser, *, endpoint: bool = False) -> None:
    parser.add_argument("--json", action="store_true", help="print one machine-readable JSON document on stdout")
    if endpoint:
        parser.add_argument("--endpoint-url", default=None,
                            help="AWS API endpoint override (moto, LocalStack, a VPC endpoint); AWS_ENDPOINT_URL also works")
        parser.add_argument("--region", default=None, help="AWS region (default: AWS_REGION or eu-central-1)")


def info(message: str) -> None:
    console.print(masker(message), markup=False)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(masker.data(document), indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def verdict(ok: bool, summary: str) -> None:
    """The last line of every run: PASS/FAIL and a one-line summary."""
    console.print(("PASS: " if ok else "FAIL: ") + masker(summary), markup=False,
                  style="bold green" if ok else "bold red")


def fail(message: str, exit_code: int = EXIT_FAILURE) -> NoReturn:
    raise ScriptError(message, exit_code)


def one_line(err: BaseException) -> str:
    """An unexpected exception as one masked line: its type and the first line of its message.
    AWS errors keep their operation and error code, which is what an operator acts on."""
    from botocore.exceptions import ClientError
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        operation = getattr(err, "operation_name", "") or "AWS call"
        text = f"{operation}: {error.get('Code', 'error')}: {error.get('Message', '')}"
    else:
        lines = str(err).strip().splitlines()
        text = f"{type(err).__name__}: {lines[0] if lines else 'no message'}"
    return masker(text)


def run(main: Callable[[Optional[list[str]]], int], argv: Optional[Iterable[str]] = None) -> NoReturn:
    """Run a script's main(): one-line errors, exit codes, Ctrl-C handled.

    Anything a script did not turn into a ScriptError still ends as one masked line and exit
    code 1; set PSYCHOLOGY_API_DEBUG=1 to see the traceback as well."""
    try:
        code = main(list(argv) if argv is not None else None)
    except ScriptError as err:
        console.print(f"error: {masker(str(err))}", markup=False, style="red")
        code = err.exit_code
    except KeyboardInterrupt:
        console.print("error: interrupted", markup=False, style="red")
        code = 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; nothing more to say.
        sys.stderr.close()
        code = EXIT_OK
    except Exception as err:  # noqa: BLE001 - the last line of defence of every script
        if os.environ.get("PSYCHOLOGY_API_DEBUG"):
            console.print_exception()
        console.print(f"error: {one_line(err)}", markup=False, style="red")
        code = EXIT_FAILURE
    sys.exit(code)
