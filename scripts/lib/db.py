"""The one way scripts reach PostgreSQL: TLS with the server's certificate verified
(`sslmode=verify-full` against the RDS certificate authorities), SCRAM authentication only,
short connect timeouts, credentials from a DSN or from Secrets Manager (RDS secret format),
password never on a command line or in logs.

The certificate authorities come, in this order, from the DSN's `sslrootcert`, from
PGSSLROOTCERT, else from the RDS bundle shipped with the scripts (`scripts/lib/certs/`, inside
the functions' package and the monitoring host's operations bundle): nothing is fetched at run
time, and a missing bundle stops the connection with a message saying what to do.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from scripts.lib import rds_ca
from scripts.lib.cli import EXIT_USAGE, ScriptError, int_range, masker
from scripts.lib.secrets import read_secret_json

# Every libpq mode short of verifying the certificate AND the host name is raised to this one:
# `require` alone encrypts to whoever answers, a spoofed server included.
REQUIRED_SSLMODE = "verify-full"
# libpq (16+) refuses any other exchange, so a server cannot ask for the password in clear.
REQUIRED_AUTH = "scram-sha-256"
CA_BUNDLE_ENVIRONMENT_VARIABLE = "PGSSLROOTCERT"
CONNECT_TIMEOUT_SECONDS = 5
# Where --dsn comes from when the option is not given: an argument is visible to every user of
# the machine (`ps`), the environment only to the process owner. Without a password in the DSN
# libpq itself falls back to PGPASSWORD or ~/.pgpass.
DSN_ENVIRONMENT_VARIABLE = "PSYCHOLOGY_API_DSN"


@dataclass(frozen=True)
class DbTarget:
    host: str
    port: int
    dbname: str
    user: str
    password: str = ""
    sslrootcert: Optional[str] = None

    def __post_init__(self) -> None:
        masker.add(self.password)

    @property
    def sslmode(self) -> str:
        """Not a choice: the certificate and the host name are always verified."""
        return REQUIRED_SSLMODE

    def with_dbname(self, dbname: str) -> DbTarget:
        return replace(self, dbname=dbname)

    def with_credentials(self, user: str, password: str) -> DbTarget:
        return replace(self, user=user, password=password)

    def ca_bundle(self) -> str:
        """The certificate authorities the server's certificate must chain to; raises when the
        file is missing (libpq's own message would not say where the bundle comes from)."""
        bundled = str(rds_ca.RDS_CA_BUNDLE)
        chosen = self.sslrootcert or os.environ.get(CA_BUNDLE_ENVIRONMENT_VARIABLE) or bundled
        if chosen != "system" and not Path(chosen).is_file():
            if chosen == bundled:
                raise DbConnectError(
                    f"cannot connect to {self.describe()}: the RDS certificate bundle {bundled} is missing; "
                    f"put AWS's {rds_ca.RDS_CA_BUNDLE_URL} there (docs/security.md#tls-to-the-database), or name a CA file "
                    f"with sslrootcert in the DSN or ${CA_BUNDLE_ENVIRONMENT_VARIABLE}")
            raise DbConnectError(f"cannot connect to {self.describe()}: the CA file {chosen} does not exist")
        return chosen

    def conninfo(self, application_name: str = "psychology-api-ops") -> str:
        params: dict[str, Any] = {
            "host": self.host, "port": self.port, "dbname": self.dbname, "user": self.user,
            "password": self.password or None, "sslmode": self.sslmode, "sslrootcert": self.ca_bundle(),
            "require_auth": REQUIRED_AUTH,
            "connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": application_name,
        }
        return make_conninfo(**{k: v for k, v in params.items() if v is not None})

    def libpq_env(self) -> dict[str, str]:
        """Environment for pg_dump / pg_restore / psql: the password travels in the child's
        environment, never in its argv (visible in `ps`). PGREQUIREAUTH needs a libpq 16+
        client; older ones ignore it (and still verify the certificate)."""
        env = dict(os.environ)
        env.update({"PGHOST": self.host, "PGPORT": str(self.port), "PGDATABASE": self.dbname,
                    "PGUSER": self.user, "PGSSLMODE": self.sslmode, "PGSSLROOTCERT": self.ca_bundle(),
                    "PGREQUIREAUTH": REQUIRED_AUTH, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_SECONDS)})
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def describe(self) -> str:
        """Safe to print: no password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}?sslmode={self.sslmode}"


def target_from_dsn(dsn: str, *, source: str = "--dsn") -> DbTarget:
    """A target from a connection string. A DSN without a password gives a target without one,
    so libpq looks for it in PGPASSWORD or the password file (~/.pgpass, PGPASSFILE). The DSN is
    the operator's input: a malformed one is a usage error (exit 2)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as err:
        raise ScriptError(f"{source} is not a valid PostgreSQL connection string: {masker(str(err)).strip()}",
                          EXIT_USAGE) from None
    missing = [k for k in ("host", "dbname", "user") if not params.get(k)]
    if missing:
        raise ScriptError(f"{source} lacks {', '.join(missing)}", EXIT_USAGE)
    port = str(params.get("port") or 5432)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ScriptError(f"{source} has the port {port!r}: expected a number from 1 to 65535", EXIT_USAGE)
    return DbTarget(host=str(params["host"]), port=int(port), dbname=str(params["dbname"]),
                    user=str(params["user"]), password=str(params.get("password") or ""),
                    # The DSN's sslmode is ignored: whatever it asks for, verify-full applies.
                    sslrootcert=params.get("sslrootcert"))  # type: ignore[arg-type]


def target_from_document(doc: dict[str, Any], *, source: str = "secret", host: Optional[str] = None,
                         port: Optional[int] = None, dbname: Optional[str] = None) -> DbTarget:
    """A target from an already-read secret document in the RDS format ({username, password}
    and, for application secrets, host/port/dbname). Explicit arguments win over the document."""
    try:
        user, password = str(doc["username"]), str(doc["password"])
    except KeyError:
        raise ScriptError(f"{source} lacks username/password") from None
    masker.add(password)
    resolved_host = host or doc.get("host")
    resolved_db = dbname or doc.get("dbname")
    if not resolved_host or not resolved_db:
        raise ScriptError(f"{source} has no host/dbname; pass --db-host and --db-name")
    return DbTarget(host=str(resolved_host), port=int(port or doc.get("port") or 5432), dbname=str(resolved_db),
                    user=user, password=password)


def target_from_secret(secret_id: str, *, host: Optional[str] = None, port: Optional[int] = None,
                       dbname: Optional[str] = None, stage: str = "AWSCURRENT", version_id: Optional[str] = None,
                       endpoint_url: Optional[str] = None, region: Optional[str] = None,
                       client: Any = None) -> DbTarget:
    """Credentials from a Secrets Manager secret in the RDS format ({username, password} and,
    for application secrets, host/port/dbname). Explicit arguments win over the secret."""
    doc = read_secret_json(secret_id, stage=stage, version_id=version_id, endpoint_url=endpoint_url,
                           region=region, client=client)
    return target_from_document(doc, source=f"secret {secret_id}", host=host, port=port, dbname=dbname)


# libpq repeats the server the target already names ("connection failed: connection to server at
# "db" (10.0.1.5), port 5432 failed: ..."): the reason after it is what the one line needs.
_LIBPQ_SERVER_PREFIX = re.compile(r'^(?:connection failed: )?connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed: ')


class DbConnectError(ScriptError):
    """A failed connection, with the one-line (masked) reason; `auth_failed` tells a rejected
    password apart from an unreachable server. PostgreSQL reports an unknown role and a wrong
    password the same way on purpose, so both count as an authentication failure."""

    @property
    def auth_failed(self) -> bool:
        return "password authentication failed" in str(self)

    @property
    def role_connection_limit(self) -> bool:
        """The login's CONNECTION LIMIT is reached (SQLSTATE 53300): its other sessions hold them all."""
        return "too many connections for role" in str(self)


def connect(target: DbTarget, *, autocommit: bool = False, application_name: str = "psychology-api-ops") -> psycopg.Connection:
    try:
        return psycopg.connect(target.conninfo(application_name), autocommit=autocommit)
    except psycopg.OperationalError as err:
        # libpq messages can echo connection parameters; mask before anyone prints them.
        reason = _LIBPQ_SERVER_PREFIX.sub("", masker(str(err)).strip().splitlines()[0])
        raise DbConnectError(f"cannot connect to {target.describe()}: {reason}") from None


def add_target_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_argument_group("database")
    group.add_argument("--dsn", default=None,
                       help="PostgreSQL connection string (TLS is verified: any sslmode is raised to verify-full, against "
                            "the DSN's sslrootcert, else $PGSSLROOTCERT, else the RDS bundle in scripts/lib/certs/); "
                            f"default: the environment variable {DSN_ENVIRONMENT_VARIABLE}. Leave the password out of it "
                            "(an argument is visible in `ps`): libpq then reads PGPASSWORD or ~/.pgpass")
    group.add_argument("--secret-id", default=None,
                       help="read the credentials from this Secrets Manager secret instead of --dsn")
    group.add_argument("--db-host", default=None, help="host, when the secret has none (the RDS master secret)")
    group.add_argument("--db-port", type=int_range(1, 65535), default=None, help="port (default: the secret's, else 5432)")
    group.add_argument("--db-name", default=None, help="database name, when the secret has none")
    parser.set_defaults(_db_target_required=required)


def target_from_args(args: argparse.Namespace) -> Optional[DbTarget]:
    """--dsn, else --secret-id, else $PSYCHOLOGY_API_DSN (an explicit option wins over the
    environment, so a shell that exports the variable can still name a secret)."""
    if args.dsn and args.secret_id:
        raise ScriptError("give either --dsn or --secret-id, not both", EXIT_USAGE)
    if args.dsn:
        return target_from_dsn(args.dsn)
    if args.secret_id:
        return target_from_secret(args.secret_id, host=args.db_host, port=args.db_port, dbname=args.db_name,
                                  endpoint_url=getattr(args, "endpoint_url", None), region=getattr(args, "region", None))
    from_environment = os.environ.get(DSN_ENVIRONMENT_VARIABLE, "").strip()
    if from_environment:
        return target_from_dsn(from_environment, source=f"${DSN_ENVIRONMENT_VARIABLE}")
    if getattr(args, "_db_target_required", True):
        raise ScriptError(f"a database is required: --dsn DSN, --secret-id ARN or ${DSN_ENVIRONMENT_VARIABLE}", EXIT_USAGE)
    return None
