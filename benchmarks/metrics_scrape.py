"""What dead gunicorn workers cost a scrape of the API hosts' metrics, against a host whose
workers are all alive, in one run.

    python benchmarks/metrics_scrape.py [--dead 0,250,1000,4000] [--series 60] [--rounds 3] [--json]

The API hosts run prometheus_client in multiprocess mode (components/templates/api/): every
gunicorn worker writes its metrics to files named by its pid, and a scrape sums every file.
gunicorn recycles a worker after max_requests (1000, the spec's value); a dead worker's counter
and histogram files must stay (dropping them would make the sums go down, which Prometheus
reads as a counter reset), so they pile up until the service restarts (a release, a secrets
refresh that changed something, the host's replacement after apiMaxInstanceLifetimeDays).

The hosts' gunicorn configuration folds a dead worker's files into one archive per kind
(`child_exit`). For each --dead count, the files of 9 live workers (a c6i.xlarge: 2 * 4 vCPUs
+ 1) plus that many dead ones are written the way a worker writes them (a labelled counter and
histogram of --series label sets, as django-prometheus keeps per view and method), then a
scrape is timed the way the worker that answers /metrics makes it (MultiProcessCollector +
generate_latest), best of --rounds: once with every dead worker's files left in place, once
after the configuration's own fold (the function is taken from the rendered template), with the
fold's cost per worker. Prints the times and their ratios to the all-alive baseline measured in
the same run, and checks that both layouts scrape the same values. Timing figures depend on the
machine; they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIVE_WORKERS = 9
REQUESTS_PER_WORKER = 1000  # gunicorn max_requests


def write_workers_files(directory: Path, pids: list[int], series: int) -> None:
    """The files these workers leave, written in a process of their own: prometheus_client keeps
    every file it opened open until its process ends."""
    with ProcessPoolExecutor(max_workers=1, max_tasks_per_child=1) as pool:
        pool.submit(_write_in_child, str(directory), pids, series).result()


def _write_in_child(directory: str, pids: list[int], series: int) -> None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    for pid in pids:
        write_worker_files(Path(directory), pid, series)


def write_worker_files(directory: Path, pid: int, series: int) -> None:
    """The files one worker leaves: its counter and histogram values for `series` label sets."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, values

    values.ValueClass = values.MultiProcessValue(lambda: pid)
    registry = CollectorRegistry()
    requests = Counter("bench_requests", "requests", ["view", "method"], registry=registry)
    latency = Histogram("bench_latency_seconds", "latency", ["view", "method"], registry=registry)
    for i in range(series):
        labels = (f"view{i // 3}", ("GET", "POST", "PUT")[i % 3])
        requests.labels(*labels).inc(REQUESTS_PER_WORKER / series)
        latency.labels(*labels).observe(0.05)


def scrape(directory: Path, rounds: int) -> tuple[float, bytes]:
    """Best time of a scrape, and what it answered."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    best, text = float("inf"), b""
    for _ in range(rounds):
        started = time.perf_counter()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(directory))
        text = generate_latest(registry)
        best = min(best, time.perf_counter() - started)
    return best, text


def same_values(one: bytes, other: bytes) -> bool:
    """The same samples with the same values, up to float rounding (the sums are added in
    another order)."""
    def samples(text: bytes) -> dict[str, float]:
        pairs = (line.rsplit(" ", 1) for line in text.decode().splitlines() if line and not line.startswith("#"))
        return {name: float(value) for name, value in pairs}

    left, right = samples(one), samples(other)
    return left.keys() == right.keys() and all(math.isclose(left[k], right[k], rel_tol=1e-9) for k in left)


def configured_fold() -> Any:
    """`_fold_into_archive` of the API hosts' rendered gunicorn configuration."""
    import jinja2

    template = ROOT / "components" / "templates" / "api" / "gunicorn.conf.py.j2"
    source = jinja2.Template(template.read_text(), undefined=jinja2.StrictUndefined).render(gunicorn_bind="127.0.0.1:0")
    namespace: dict[str, Any] = {}
    exec(compile(source, str(template), "exec"), namespace)  # noqa: S102 - the project's own configuration
    return namespace["_fold_into_archive"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dead", default="0,250,1000,4000", help="dead-worker counts to time (comma-separated)")
    parser.add_argument("--series", type=int, default=60, help="label sets per metric and worker (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="scrapes per count; the best counts (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = parser.parse_args(argv)
    counts = sorted({int(c) for c in args.dead.split(",")} | {0})

    fold = configured_fold()
    results: list[dict[str, Any]] = []
    for count in counts:
        row: dict[str, Any] = {"dead_workers": count, "requests_served": (LIVE_WORKERS + count) * REQUESTS_PER_WORKER}
        for layout in ("left", "folded"):
            root = Path(tempfile.mkdtemp(prefix="metrics-scrape-"))
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(root)
            try:
                write_workers_files(root, list(range(1, LIVE_WORKERS + 1)), args.series)
                fold_seconds = 0.0
                for first in range(0, count, 500):
                    dead = list(range(100_000 + first, 100_000 + min(count, first + 500)))
                    write_workers_files(root, dead, args.series)
                    for pid in dead if layout == "folded" else []:
                        started = time.perf_counter()
                        fold(str(root), [pid])
                        fold_seconds += time.perf_counter() - started
                seconds, text = scrape(root, args.rounds)
                row[layout] = {"files": len(list(root.iterdir())), "scrape_seconds": round(seconds, 4)}
                if layout == "folded" and count:
                    row[layout]["fold_ms_per_worker"] = round(fold_seconds / count * 1000, 2)
                    if not same_values(text, row.pop("_left_text")):
                        raise SystemExit(f"FAIL: the folded files scrape other values than the left ones ({count} dead)")
                else:
                    row["_left_text"] = text
            finally:
                shutil.rmtree(root, ignore_errors=True)
        row.pop("_left_text", None)
        results.append(row)
        print(f"  timed {count} dead workers", file=sys.stderr)
    baseline = results[0]["left"]["scrape_seconds"]
    for row in results:
        for layout in ("left", "folded"):
            row[layout]["ratio_to_all_alive"] = round(row[layout]["scrape_seconds"] / baseline, 1)

    if args.json:
        print(json.dumps({"live_workers": LIVE_WORKERS, "series": args.series, "results": results}, indent=2))
    else:
        print(f"{'dead':>6} {'requests':>9} | {'files':>6} {'scrape s':>9} {'x alive':>8} | "
              f"{'files':>6} {'scrape s':>9} {'x alive':>8} {'fold ms':>8}")
        print(f"{'':>6} {'':>9} | {'files left in place':^26} | {'folded (the hosts configuration)':^35}")
        for r in results:
            left, folded = r["left"], r["folded"]
            print(f"{r['dead_workers']:>6} {r['requests_served']:>9} | {left['files']:>6} {left['scrape_seconds']:>9.4f} "
                  f"{left['ratio_to_all_alive']:>8.1f} | {folded['files']:>6} {folded['scrape_seconds']:>9.4f} "
                  f"{folded['ratio_to_all_alive']:>8.1f} {folded.get('fold_ms_per_worker', 0):>8.2f}")
    worst = results[-1]
    print(f"PASS: with {worst['dead_workers']} dead workers a scrape takes {worst['folded']['ratio_to_all_alive']}x the "
          f"all-alive baseline folded, {worst['left']['ratio_to_all_alive']}x with their files left in place",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
