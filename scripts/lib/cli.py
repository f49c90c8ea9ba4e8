"""Command-line conventions shared by every script.

* Exit codes: 0 success, 1 runtime failure, 2 usage error (an unknown or missing option, a value
  of the wrong type or out of range, a missing file or a file of the wrong kind named by an
  option). A tool may add its own verdict code above these (`scripts.drift`: 3, drift found).
* `--json` prints exactly one JSON document on stdout; progress and human text go to stderr.
* A run ends with one short line on stderr (at most SHORT_LINE characters): the verdict
  `PASS: ...`/`FAIL: ...` or `error: ...`. A longer text is printed in full on the line above.
* Known secret values are masked in everything the scripts print.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn, Optional

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# The last line of a run (verdict or error) is read at a glance: what failed, how many.
SHORT_LINE = 200



class _Console:
    """rich's console on stderr (stdout stays clean for --json), made on first use: the
    in-VPC functions import this module for its errors and masking, never print through it,
    and so their package carries no rich (components/lambda_package.py)."""

    def __init__(self) -> None:
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
        return getattr(self._console, name)


# Human output of every script.
console: Any = _Console()


class ScriptError(Exception):
    """A failure with a message fit for one line, and the exit code to end with."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


_MIN_MASKED_LINE = 16  # a line of a multi-line secret is masked on its own from this length


class Masker:
    """Replaces registered secret values (and password fields in URLs) with ***."""

    _URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?P<at>@)")
    _KV_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<password>'[^']*'|\S+)", re.IGNORECASE)

    def __init__(self) -> None:
        self._values: set[str] = set()

    @staticmethod
    def forms(value: str) -> list[str]:
        """The ways a value can reach an output: as it is, JSON-escaped (a quote, backslash or
        newline in it is written differently there), and line by line (a multi-line value such
        as a PEM key is printed, and masked by CI runners, one line at a time). Only lines long
        enough to be secret material count, not a PEM armour line: those would mask harmless
        text everywhere else."""
        escaped = [json.dumps(value, ensure_ascii=ascii_only)[1:-1] for ascii_only in (True, False)]
        lines = [line.strip() for line in value.splitlines()] if len(value.splitlines()) > 1 else []
        lines = [line for line in lines if len(line) >= _MIN_MASKED_LINE and not line.startswith("-----")]
        return [form for form in dict.fromkeys([value, *escaped, *lines]) if len(form) >= 4]

    def add(self, value: Optional[str]) -> None:
        if value:
            self._values.update(self.forms(value))

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


class ArgumentParser(argparse.ArgumentParser):
    """argparse under the scripts' contract: a usage error prints the usage, then ends like every
    other failure, with one `error:` line (through `run`) and exit 2. Subcommand parsers are of
    this class too (argparse makes them of their parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise ScriptError(f"{self.prog}: {message}", EXIT_USAGE)


# --- argument types: a wrong value is a usage error at parse time, before anything connects ---

def _bounded(kind: Callable[[str], Any], name: str, minimum: Optional[float], maximum: Optional[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {name} value: {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"invalid {name} value: {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, not {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:g}, not {text}")
        return value

    parse.__name__ = name
    return parse


def int_range(minimum: Optional[int] = None, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: an integer within [minimum, maximum]."""
    return _bounded(int, "int", minimum, maximum)


def float_range(minimum: Optional[float] = None, maximum: Optional[float] = None) -> Callable[[str], float]:
    """An argparse type: a finite number within [minimum, maximum]."""
    return _bounded(float, "float", minimum, maximum)


def existing_file(text: str) -> str:
    """An argparse type: a file that exists (a CA bundle, an input document)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"not a file but a directory: {text}")
    return text


def existing_dir(text: str) -> str:
    """An argparse type: a directory that exists (tools, migrations, spool space)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such directory: {text}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {text}")
    return text


def file_to_write(text: str) -> Path:
    """An argparse type: a file this run writes, in a directory that exists."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"a directory, not a file: {text}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {path.parent}")
    return path


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


def shorten(text: str, limit: int = SHORT_LINE) -> str:
    """`text` cut to at most `limit` characters, marked with "..." where it was cut."""
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _last_line(prefix: str, text: str, style: str) -> None:
    """The run's last line, at most SHORT_LINE characters; a longer text goes in full above it."""
    text = masker(" ".join(text.splitlines()))
    if len(prefix) + len(text) > SHORT_LINE:
        console.print(f"details: {text}", markup=False)
    console.print(shorten(prefix + text), markup=False, style=style)


def verdict(ok: bool, summary: str) -> None:
    """The last line of every run: PASS/FAIL and a one-line summary."""
    _last_line("PASS: " if ok else "FAIL: ", summary, "bold green" if ok else "bold red")


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
        _last_line("error: ", str(err), "red")
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
        _last_line("error: ", one_line(err), "red")
        code = EXIT_FAILURE
    sys.exit(code)
