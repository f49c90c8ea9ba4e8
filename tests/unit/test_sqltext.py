"""Splitting SQL files into statements for no-transaction migrations."""

from __future__ import annotations

from scripts.dbops.sqltext import split_statements


def test_plain_statements_and_trailing_comments() -> None:
    sql = "-- header; with a semicolon\nCREATE TABLE a (id int);\n\nCREATE INDEX CONCURRENTLY a_id ON a (id);\n-- end;\n"
    assert split_statements(sql) == ["-- header; with a semicolon\nCREATE TABLE a (id int)",
                                     "CREATE INDEX CONCURRENTLY a_id ON a (id)"]


def test_semicolons_inside_strings_identifiers_and_comments() -> None:
    sql = ("INSERT INTO t VALUES ('a;b', 'it''s; fine', E'esc\\'; still');\n"
           "SELECT \"odd;name\" FROM t /* block; comment /* nested; */ still */;\n"
           "SELECT $1::int;")
    assert split_statements(sql) == [
        "INSERT INTO t VALUES ('a;b', 'it''s; fine', E'esc\\'; still')",
        "SELECT \"odd;name\" FROM t /* block; comment /* nested; */ still */",
        "SELECT $1::int",
    ]


def test_dollar_quoted_bodies() -> None:
    sql = ("DO $$ BEGIN PERFORM 1; PERFORM 2; END $$;\n"
           "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$;\n")
    assert split_statements(sql) == ["DO $$ BEGIN PERFORM 1; PERFORM 2; END $$",
                                     "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$"]


def test_only_comments_is_nothing() -> None:
    assert split_statements("-- nothing here;\n/* nor; here */\n;\n") == []
