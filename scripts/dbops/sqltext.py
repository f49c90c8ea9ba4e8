"""Splitting a SQL file into statements, for files that must run outside a transaction.

PostgreSQL runs a multi-statement simple query as one implicit transaction, so
`CREATE INDEX CONCURRENTLY` only works when sent on its own. The splitter understands what can
hide a semicolon: quoted strings and identifiers, dollar-quoted bodies and comments.
"""

from __future__ import annotations

import re

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def split_statements(sql: str) -> list[str]:
    statements: list[str] = []
    start = 0
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
        elif ch == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif ch in ("'", '"'):
            escape_string = ch == "'" and i > 0 and sql[i - 1] in "eE" and not _is_identifier_char(sql, i - 2)
            i = _skip_quoted(sql, i, ch, backslash_escapes=escape_string)
        elif ch == "$" and (match := _DOLLAR_TAG.match(sql, i)) and not _is_identifier_char(sql, i - 1):
            close = sql.find(match.group(0), match.end())
            i = n if close == -1 else close + len(match.group(0))
        elif ch == ";":
            _append(statements, sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    _append(statements, sql[start:])
    return statements


def _append(statements: list[str], text: str) -> None:
    if _strip_comments(text).strip():
        statements.append(text.strip())


def _is_identifier_char(sql: str, index: int) -> bool:
    # `$1`-style parameters and identifiers such as a$b are not dollar quotes.
    return index >= 0 and (sql[index].isalnum() or sql[index] == "_")


def _skip_quoted(sql: str, i: int, quote: str, *, backslash_escapes: bool = False) -> int:
    i += 1
    while i < len(sql):
        if backslash_escapes and sql[i] == "\\":  # E'...' strings escape with a backslash
            i += 2
            continue
        if sql[i] == quote:
            if sql.startswith(quote * 2, i):  # doubled quote = escaped quote
                i += 2
                continue
            return i + 1
        i += 1
    return i


def _skip_block_comment(sql: str, i: int) -> int:
    depth = 0
    while i < len(sql):
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"--[^\n]*", "", text)
