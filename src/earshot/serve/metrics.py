"""Prometheus metrics in the text exposition format, written here (no client library needed)."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    esc = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, esc, strict=True)) + "}"


class Metrics:
    """Counters, gauges and one latency histogram; thread-safe; `render()` gives the /metrics text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)  # route, method, status
        self.errors: dict[tuple[str, str], int] = defaultdict(int)  # route, error type
        self.rejected: dict[str, int] = defaultdict(int)  # overload | timeout
        self.hist: dict[str, list[int]] = {}  # route -> bucket counts (+inf last)
        self.hist_sum: dict[str, float] = defaultdict(float)
        self.in_flight = 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def gauge(self, name: str, help_: str, fn: Callable[[], float]) -> None:
        """Register a gauge read at render time."""
        self.gauges[name] = (help_, fn)

    def start(self) -> None:
        with self._lock:
            self.in_flight += 1

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[(route, method, str(status))] += 1
            counts = self.hist.setdefault(route, [0] * (len(BUCKETS) + 1))
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.hist_sum[route] += seconds

    def error(self, route: str, type_: str) -> None:
        with self._lock:
            self.errors[(route, type_)] += 1

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            out += [
                "# HELP earshot_http_requests_total HTTP requests by route, method and status.",
                "# TYPE earshot_http_requests_total counter",
            ]
            for (route, method, status), n in sorted(self.requests.items()):
                labels = _labels(("route", "method", "status"), (route, method, status))
                out.append(f"earshot_http_requests_total{labels} {n}")
            out += [
                "# HELP earshot_http_request_duration_seconds Request latency by route.",
                "# TYPE earshot_http_request_duration_seconds histogram",
            ]
            for route, counts in sorted(self.hist.items()):
                cum = 0
                for le, c in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                    cum += c
                    out.append(
                        f"earshot_http_request_duration_seconds_bucket{_labels(('route', 'le'), (route, le))} {cum}"
                    )
                out.append(
                    f"earshot_http_request_duration_seconds_sum{_labels(('route',), (route,))} "
                    f"{self.hist_sum[route]:.6f}"
                )
                out.append(f"earshot_http_request_duration_seconds_count{_labels(('route',), (route,))} {cum}")
            out += [
                "# HELP earshot_errors_total Error responses by route and error type.",
                "# TYPE earshot_errors_total counter",
            ]
            for (route, type_), n in sorted(self.errors.items()):
                out.append(f"earshot_errors_total{_labels(('route', 'type'), (route, type_))} {n}")
            out += [
                "# HELP earshot_rejected_total Requests turned away: overload (503) or timeout (504).",
                "# TYPE earshot_rejected_total counter",
            ]
            for reason in ("overload", "timeout"):
                out.append(f"earshot_rejected_total{_labels(('reason',), (reason,))} {self.rejected[reason]}")
            out += [
                "# HELP earshot_http_in_flight HTTP requests being handled now.",
                "# TYPE earshot_http_in_flight gauge",
                f"earshot_http_in_flight {self.in_flight}",
            ]
        for name, (help_, fn) in sorted(self.gauges.items()):
            try:
                value = float(fn())
            except Exception:  # a gauge must never break the scrape
                continue
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(out) + "\n"
