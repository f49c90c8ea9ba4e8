"""The API hosts' gunicorn configuration as the metrics see it: prometheus_client's multiprocess
mode, the master folding recycled workers' files into archives, and the lock that keeps scrapes
and folds apart. Run by the real gunicorn where it matters, on the file the launch template
carries."""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.mock_engine import Plan
from tests.services import free_port
from tests.unit.test_host_templates import HostFiles, grab, host_files_of, unit_settings

GUNICORN_CONF = "/etc/psychology-api/gunicorn.conf.py"
DEAD_PID = 424242


@pytest.fixture(scope="module")
def host(plans: dict[str, Plan], tmp_path_factory: pytest.TempPathFactory) -> HostFiles:
    """prod's API host files (staging's gunicorn configuration is the same file, checked below)."""
    return host_files_of(plans["prod"], tmp_path_factory.mktemp("host-prod"))


def test_both_stacks_run_the_same_gunicorn_configuration(plans: dict[str, Plan], tmp_path: Path) -> None:
    texts = {host_files_of(plan, tmp_path / stack).text(GUNICORN_CONF) for stack, plan in plans.items()}
    assert len(texts) == 1


def configuration(host: HostFiles) -> dict[str, Any]:
    """The rendered gunicorn configuration's names, as gunicorn reads them."""
    namespace: dict[str, Any] = {}
    exec(compile(host.text(GUNICORN_CONF), "gunicorn.conf.py", "exec"), namespace)  # noqa: S102 - our own rendered file
    return namespace


# --- run by the real gunicorn ---------------------------------------------------------------------

# A stand-in for the Django application's metrics as django-prometheus exports them: the worker's
# own counter, and /metrics from prometheus_client's multiprocess collector when
# PROMETHEUS_MULTIPROC_DIR is set (else the worker's own registry, what a scrape saw before).
METRICS_APP = """
import os
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

HITS = Counter("demo_hits", "requests served")
LATENCY = Histogram("demo_latency_seconds", "request latency", buckets=(0.025, 0.5))
WORKERS = Gauge("demo_workers", "workers that served a request", multiprocess_mode="livesum")

def application(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        registry = REGISTRY
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        HITS.inc()
        LATENCY.observe(0.01)
        WORKERS.set(1)
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Connection", "close")])
    return [body]
"""


def _http_get(base: str, path: str) -> str:
    with urllib.request.urlopen(base + path, timeout=10) as answer:  # noqa: S310 - a local test server
        return answer.read().decode()


def _wait_until_serving(get: Callable[[str], str], server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            get("/")
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"gunicorn did not start (exit code {server.poll()})")


class Gunicorn:
    """The real gunicorn running the rendered configuration with the unit's metrics directory,
    three workers recycled every seven requests; `get(path)` asks it over HTTP."""

    def __init__(self, host: HostFiles, tmp_path: Path) -> None:
        unit = unit_settings(host.path("/etc/systemd/system/psychology-api.service"))
        [runtime_directory] = unit["RuntimeDirectory"]
        assert f"PROMETHEUS_MULTIPROC_DIR=/run/{runtime_directory}" in unit["Environment"]
        self.metrics_dir = tmp_path / runtime_directory
        self.error_log = tmp_path / "error.log"
        self._host, self._tmp_path = host, tmp_path
        self.bind = f"127.0.0.1:{free_port()}"
        self.get: Callable[[str], str] = functools.partial(_http_get, f"http://{self.bind}")

    @contextmanager
    def running(self) -> Iterator[Gunicorn]:
        gunicorn = Path(__file__).resolve().parents[2] / "venv" / "bin" / "gunicorn"
        if not gunicorn.exists():
            pytest.skip("gunicorn is not in venv/ (requirements.txt installs it)")
        self.metrics_dir.mkdir()
        (self._tmp_path / "demo_app.py").write_text(METRICS_APP)
        server = subprocess.Popen(
            [str(gunicorn), "--config", str(self._host.path(GUNICORN_CONF)), "--bind", self.bind,
             "--workers", "3", "--max-requests", "7", "--max-requests-jitter", "0", "--worker-tmp-dir", str(self._tmp_path),
             "--access-logfile", "/dev/null", "--log-level", "debug", "--error-logfile", str(self.error_log), "--chdir", str(self._tmp_path),
             "demo_app:application"],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_until_serving(self.get, server)
            yield self
        finally:
            server.terminate()
            try:
                server.wait(timeout=40)  # graceful_timeout is 30 s
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
                raise AssertionError("gunicorn did not stop on SIGTERM:\n" + self.error_log.read_text()) from None

    def errors(self) -> list[str]:
        text = self.error_log.read_text()
        return [line for line in text.splitlines() if "[ERROR]" in line or "[WARNING]" in line or "Traceback" in line]


def hits(scrape: str) -> float:
    return float(grab(r"\ndemo_hits_total (\S+)\n", scrape))


def test_every_worker_counts_in_the_metrics_a_scrape_sees(host: HostFiles, tmp_path: Path) -> None:
    """With workers recycled mid-test (max_requests), every scrape, whichever worker answers it,
    reports every request served by every worker, dead ones included."""
    with Gunicorn(host, tmp_path).running() as gunicorn:
        served_by = {gunicorn.get("/") for _ in range(39)}
        scrapes = [gunicorn.get("/metrics") for _ in range(6)]
        files = sorted(path.name for path in gunicorn.metrics_dir.iterdir())
    assert len(served_by) > 3  # workers were recycled (max_requests) while the test ran
    for scrape in scrapes:
        assert hits(scrape) == 40.0, scrape  # the 39 and the start-up probe
        for sample in ('demo_latency_seconds_bucket{le="0.025"} 40.0', 'demo_latency_seconds_bucket{le="0.5"} 40.0',
                       'demo_latency_seconds_bucket{le="+Inf"} 40.0', "demo_latency_seconds_count 40.0"):
            assert f"\n{sample}\n" in scrape, (sample, scrape)
        # Live workers only: the recycled ones' gauges left with them (child_exit).
        assert float(grab(r"\ndemo_workers (\S+)\n", scrape)) <= 3, scrape
    assert gunicorn.errors() == []
    # The recycled workers' counters and histograms were folded into one archive per kind: the
    # files a scrape reads stay as many as the live workers' and the master's (which imported the
    # application before forking, preload_app).
    assert {"counter_archive.db", "histogram_archive.db"} <= set(files), files
    pids = {name.split("_")[-1] for name in files if name.split("_")[0] in ("counter", "histogram")} - {"archive.db"}
    assert len(pids) <= 4, files


def test_scrapes_during_worker_recycling_all_answer_and_count_each_request_once(host: HostFiles, tmp_path: Path) -> None:
    """Scrapes race the master's folds: one scraper asks for /metrics without pause while 150
    requests recycle a worker every seventh. Every scrape answers, and counts at least the
    requests answered before it began and at most those begun before it ended: a scrape that
    read a dead worker's file and the archive that already held it would count them twice, one
    that listed a file the fold then removed would fail."""
    answered = started = 1  # the start-up probe
    scraped: list[tuple[int, float, int]] = []
    failures: list[str] = []
    stop = threading.Event()

    def scrape_until_stopped(get: Callable[[str], str]) -> None:
        while not stop.is_set():
            before = answered
            try:
                value = hits(get("/metrics"))
            except Exception as err:  # noqa: BLE001 - every failure is the finding
                failures.append(repr(err))
                continue
            scraped.append((before, value, started))

    with Gunicorn(host, tmp_path).running() as gunicorn:
        scraper = threading.Thread(target=scrape_until_stopped, args=(gunicorn.get,))
        scraper.start()
        try:
            for _ in range(150):
                started += 1
                gunicorn.get("/")
                answered += 1
        finally:
            stop.set()
            scraper.join(timeout=60)
        final = hits(gunicorn.get("/metrics"))
    assert failures == [], gunicorn.errors()
    assert len(scraped) > 10, scraped
    wrong = [(low, value, high) for low, value, high in scraped if not low <= value <= high]
    assert wrong == [], wrong
    assert final == 151.0
    # A fold that found scrapes holding the lock for its whole second leaves the files to the next
    # exit (a warning, by design: back-to-back scrapes here, one every 15 s on a host); nothing else.
    assert [line for line in gunicorn.errors() if "not folded into the archive yet" not in line] == []


# --- the hooks, called as gunicorn calls them -----------------------------------------------------

@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


def write_as_worker(pid: int, requests: float) -> None:
    """What a worker with this pid leaves: its request counter and a live gauge."""
    from prometheus_client import CollectorRegistry, Counter, Gauge
    from prometheus_client import values as prometheus_values

    original = prometheus_values.ValueClass
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue(lambda: pid)
    try:
        registry = CollectorRegistry()
        Counter("demo_hits", "requests served", registry=registry).inc(requests)
        Gauge("demo_workers", "live workers", multiprocess_mode="livesum", registry=registry).set(1)
    finally:
        prometheus_values.ValueClass = original


def scrape(directory: Path) -> str:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry).decode()


def master(live_pids: tuple[int, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(WORKERS=dict.fromkeys(live_pids), log=logging.getLogger("gunicorn.error"))


def reaped(pid: int) -> SimpleNamespace:
    return SimpleNamespace(pid=pid)


def test_a_reaped_workers_live_gauges_leave_and_its_counters_fold(host: HostFiles, metrics_dir: Path) -> None:
    write_as_worker(DEAD_PID, 5)
    write_as_worker(7, 3)  # a live worker
    configuration(host)["child_exit"](master(live_pids=(7,)), reaped(DEAD_PID))
    names = sorted(p.name for p in metrics_dir.iterdir())
    assert names == ["counter_7.db", "counter_archive.db", "fold.lock", "gauge_livesum_7.db"]
    assert hits(scrape(metrics_dir)) == 8.0


def test_a_fold_waits_for_a_running_scrape_and_the_next_exit_folds_what_it_left(
        host: HostFiles, metrics_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf = configuration(host)
    conf["FOLD_LOCK_WAIT_SECONDS"] = 0.05
    write_as_worker(DEAD_PID, 5)
    with open(metrics_dir / conf["FOLD_LOCK"], "a") as scraping:
        fcntl.flock(scraping, fcntl.LOCK_SH)  # a worker in the middle of a scrape
        conf["child_exit"](master(), reaped(DEAD_PID))
        fcntl.flock(scraping, fcntl.LOCK_UN)
    assert "counter_424242.db" in os.listdir(metrics_dir)
    assert f"metrics of workers [{DEAD_PID}] not folded into the archive yet" in caplog.text
    write_as_worker(DEAD_PID + 1, 2)
    conf["child_exit"](master(), reaped(DEAD_PID + 1))
    assert sorted(p.name for p in metrics_dir.glob("*.db")) == ["counter_archive.db"]
    assert hits(scrape(metrics_dir)) == 7.0


def test_a_scrape_waits_for_a_running_fold(host: HostFiles, metrics_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import multiprocess

    # post_fork wraps the collector in the worker it runs in; here, in this test's process only.
    monkeypatch.setattr(multiprocess.MultiProcessCollector, "collect", multiprocess.MultiProcessCollector.collect)
    conf = configuration(host)
    conf["post_fork"](master(), None)
    write_as_worker(7, 3)
    answers: list[str] = []
    with open(metrics_dir / conf["FOLD_LOCK"], "a") as folding:
        fcntl.flock(folding, fcntl.LOCK_EX)  # the master in the middle of a fold
        scraper = threading.Thread(target=lambda: answers.append(scrape(metrics_dir)))
        scraper.start()
        scraper.join(timeout=0.5)
        assert scraper.is_alive() and answers == []
        fcntl.flock(folding, fcntl.LOCK_UN)
    scraper.join(timeout=10)
    assert hits(answers[0]) == 3.0


def test_a_scrape_passes_over_a_file_still_being_created(host: HostFiles, metrics_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus_client creates a worker's file empty and sizes it after; prometheus_client's own
    collect would fail on it (struct.error) and so answer the whole scrape with a 500."""
    from prometheus_client import multiprocess

    write_as_worker(7, 3)
    (metrics_dir / "gauge_livesum_8.db").touch()  # a new worker, between creating and sizing it
    with pytest.raises(Exception, match="unpack_from requires a buffer"):
        scrape(metrics_dir)
    monkeypatch.setattr(multiprocess.MultiProcessCollector, "collect", multiprocess.MultiProcessCollector.collect)
    configuration(host)["post_fork"](master(), None)
    assert hits(scrape(metrics_dir)) == 3.0


def test_a_master_started_outside_the_unit_reaps_workers_without_a_metrics_directory(
        host: HostFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in child_exit would stop the master; gunicorn run by hand has no directory."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    configuration(host)["child_exit"](master(), reaped(DEAD_PID))
