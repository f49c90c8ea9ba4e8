"""Real local services for the integration tests and the benchmarks.

* PostgreSQL 15: a throw-away cluster in a temporary directory on a free port, with TLS and
  scram-sha-256 password authentication over TCP (plain TCP is rejected), started as the
  `postgres` user when we run as root (PostgreSQL refuses to run as root). Its certificate
  (self-signed, or signed by a test CA) names 127.0.0.1; `ca_file` is what clients trust.
* Redis: started by pytest-redis in the tests (see tests/integration/conftest.py).
* AWS: moto's ThreadedMotoServer on a free port.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin_dir() -> Path:
    for candidate in PG_BIN_CANDIDATES:
        if Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL server binaries (pg_ctl) not found; install postgresql-15")


@dataclass
class PgServer:
    host: str
    port: int
    superuser: str
    password: str
    data_dir: Path
    bin_dir: Path
    ca_file: Path  # the certificate authority the server's certificate chains to (clients' sslrootcert)

    def dsn(self, dbname: str = "postgres", user: Optional[str] = None, password: Optional[str] = None,
            sslmode: str = "require") -> str:
        user = user or self.superuser
        password = self.password if password is None else password
        return (f"postgresql://{quote(user)}:{quote(password, safe='')}@{self.host}:{self.port}/{dbname}"
                f"?sslmode={sslmode}&sslrootcert={quote(str(self.ca_file), safe='/')}")

    def conninfo(self, dbname: str = "postgres") -> dict[str, object]:
        return {"host": self.host, "port": self.port, "user": self.superuser, "password": self.password,
                "dbname": dbname, "sslmode": "require", "sslrootcert": str(self.ca_file)}


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def self_signed_certificate(directory: Path, cert_name: str = "cert.pem", key_name: str = "key.pem") -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1/localhost (TLS servers of the tests)."""
    cert, key = directory / cert_name, directory / key_name
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


def signed_certificate(ca: tuple[Path, Path], directory: Path, subject_alt_name: str = "IP:127.0.0.1",
                       name: str = "server") -> tuple[Path, Path]:
    """A server certificate for `subject_alt_name`, signed by `ca` (a self_signed_certificate)."""
    cert, key, request = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={subject_alt_name}\nbasicConstraints=CA:FALSE\n")
    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=psychology-test-db",
                    "-keyout", str(key), "-out", str(request)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                    "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(cert)],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


def start_postgres(extra_settings: Optional[dict[str, str]] = None,
                   certificate: Optional[tuple[Path, Path, Path]] = None) -> PgServer:
    """initdb + pg_ctl start of a TLS-only, password-authenticated cluster. `certificate`
    (server certificate, key, CA file): what the server presents; default a self-signed one
    for 127.0.0.1/localhost, which is then its own CA."""
    bin_dir = pg_bin_dir()
    base = Path(tempfile.mkdtemp(prefix="pgtest-"))
    data_dir = base / "data"
    password = secrets.token_urlsafe(18)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(base, pg.pw_uid, pg.pw_gid)
        os.chown(pwfile, pg.pw_uid, pg.pw_gid)
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
                                 "--pwfile", str(pwfile), "-A", "scram-sha-256", "--encoding", "UTF8",
                                 "--locale", "C.UTF-8"]),
                   check=True, capture_output=True)
    if certificate is None:
        self_signed_certificate(data_dir, "server.crt", "server.key")
        shutil.copy(data_dir / "server.crt", base / "ca.crt")
    else:
        shutil.copy(certificate[0], data_dir / "server.crt")
        shutil.copy(certificate[1], data_dir / "server.key")
        os.chmod(data_dir / "server.key", 0o600)
        shutil.copy(certificate[2], base / "ca.crt")
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        for name in ("server.key", "server.crt"):
            os.chown(data_dir / name, pg.pw_uid, pg.pw_gid)
    # TLS is the only way in over TCP, as on RDS with rds.force_ssl=1.
    (data_dir / "pg_hba.conf").write_text(
        "local all all scram-sha-256\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
        "hostnossl all all 0.0.0.0/0 reject\n")
    port = free_port()
    settings = {
        "port": str(port), "listen_addresses": "'127.0.0.1'", "unix_socket_directories": f"'{base}'",
        "ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'",
        "shared_preload_libraries": "'pg_stat_statements'", "max_connections": "100",
        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
    }
    settings.update(extra_settings or {})
    with (data_dir / "postgresql.conf").open("a") as conf:
        for key, value in settings.items():
            conf.write(f"{key} = {value}\n")
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(base / "server.log"),
                                 "-w", "-t", "60", "start"]), check=True, capture_output=True)
    return PgServer(host="127.0.0.1", port=port, superuser="postgres", password=password,
                    data_dir=data_dir, bin_dir=bin_dir, ca_file=base / "ca.crt")


def stop_postgres(server: PgServer) -> None:
    subprocess.run(_as_postgres([str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-m", "immediate",
                                 "-w", "stop"]), capture_output=True)
    shutil.rmtree(server.data_dir.parent, ignore_errors=True)


@contextmanager
def tls_redis_server(cert: Path, key: Path, password: str, directory: Path) -> Iterator[int]:
    """A redis-server that speaks only TLS and wants AUTH, like ElastiCache with in-transit
    encryption; yields its port and stops it afterwards."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--requirepass", password,
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class MotoServer:
    endpoint_url: str
    server: object

    def reset(self) -> None:
        import requests

        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10)


def start_moto() -> MotoServer:
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "eu-central-1",
                       "AWS_REGION": "eu-central-1"}.items():
        os.environ[key] = value
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    return MotoServer(endpoint_url=url, server=server)
