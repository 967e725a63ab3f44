"""
Per-service metrics: counters, labelled counter families and histograms, and
their rendering in the Prometheus text format (0.0.4) for C{GET /metrics}.
A plugin counts into L{Counters} (C{counters[name] += 1}), declares labelled
names with L{Counters.labelCounters} and asks for a L{Histogram} with
L{Counters.histogram}; every other counter C{NAME} is C{netd_NAME_total}.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs

LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""
Histogram bucket bounds, in seconds, for network latencies: from a cache on
the same host (1 ms) to a slow upstream across the world (10 s).
"""

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""
The content type of the text exposition format.
"""


@attrs.frozen
class LabelledCounters:
    """
    Counters whose names are a prefix and a label value, exposed as one family.

    @ivar prefix: the counter names' common start, e.g. C{qtype_}.
    @ivar family: the family's name without C{netd_} and C{_total}, e.g. C{dns_queries}.
    @ivar label: the label the rest of the name becomes, e.g. C{qtype}.
    """

    prefix: str
    family: str
    label: str
    help: str


@attrs.define(eq=False)
class Histogram:
    """
    A distribution of observed values (latencies, in seconds), in cumulative
    buckets as Prometheus histograms are.

    @ivar bounds: the buckets' upper bounds, ascending; a last bucket, C{+Inf},
        takes everything above.
    """

    bounds: tuple[float, ...]
    help: str = ""
    counts: list[int] = attrs.field(init=False)
    sum: float = 0.0
    count: int = 0

    def __attrs_post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)) or not all(math.isfinite(b) for b in self.bounds):
            raise ValueError(f"histogram bounds must be finite and strictly ascending, got {self.bounds!r}")
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """
        Count one observation in the first bucket whose bound is at least C{value}.
        """
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """
        Each bound (C{math.inf} last) with the number of observations at most that large.
        """
        total = 0
        buckets = []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets

    def snapshot(self) -> dict[str, Any]:
        """
        A JSON-ready copy: C{count}, C{sum} and the cumulative C{buckets} by bound.
        """
        return {
            "count": self.count,
            "sum": self.sum,
            "buckets": {formatFloat(bound): count for bound, count in self.cumulative()},
        }


class Counters(dict[str, int]):
    """
    Named event counts of one service, with its histograms and its plugin's
    labelled families: a dict whose absent names read as zero, so that
    C{counters[name] += n} is as cheap as counting gets (a L{collections.Counter}
    is over twice as slow: docs/control-api.md).  Counts accruing elsewhere are
    added when read (L{snapshot}, L{accrueFrom}).

    @ivar histograms: by name (the metric is C{netd_NAME}).
    @ivar families: the declared L{LabelledCounters}, by prefix.
    @ivar gauges: values that go up and down (a cache's bytes), by name (the
        metric is C{netd_NAME}): how to read each and its help text.
    """

    def __init__(self, *args: Any, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.histograms: dict[str, Histogram] = {}
        self.families: dict[str, LabelledCounters] = {}
        self.gauges: dict[str, tuple[Callable[[], float], str]] = {}
        self._accruing: list[Callable[[], Mapping[str, int]]] = []

    def __missing__(self, name: str) -> int:
        """
        A name never counted reads as zero (and is not stored by reading it).
        """
        return 0

    def accrueFrom(self, source: Callable[[], Mapping[str, int]]) -> None:
        """
        Add what C{source()} returns to the counts whenever they are read:
        counts that accrue elsewhere and are added to these later (a
        connection's bytes, when it closes).
        """
        self._accruing.append(source)

    def snapshot(self) -> dict[str, int]:
        """
        The counts, those accruing elsewhere included, as a sorted copy that
        is safe to serialise while the service keeps counting.
        """
        counts = dict(self)
        for source in self._accruing:
            for name, count in source().items():
                counts[name] = counts.get(name, 0) + count
        return dict(sorted(counts.items()))

    def histogram(self, name: str, bounds: tuple[float, ...] = LATENCY_BUCKETS, help: str = "") -> Histogram:
        """
        The service's histogram called C{name}, made on first use; call it once
        (at build time) and keep the result for the hot path.

        @param name: the metric name without C{netd_}, with its unit, e.g.
            C{upstream_latency_seconds}.
        """
        histogram = self.histograms.get(name)
        if histogram is None:
            histogram = self.histograms[name] = Histogram(bounds, help)
        return histogram

    def gauge(self, name: str, read: Callable[[], float], help: str) -> None:
        """
        Expose C{read()}, read at each scrape, as the gauge C{netd_NAME}: a
        level (bytes held, entries) rather than a count of events.
        """
        self.gauges[name] = (read, help)

    def labelCounters(self, prefix: str, *, family: str, label: str, help: str) -> None:
        """
        Declare that counters named C{PREFIX + VALUE} are one family with a label:
        C{labelCounters("qtype_", family="dns_queries", label="qtype", ...)}
        exposes C{qtype_A} as C{netd_dns_queries_total{qtype="A"}}.  When
        several prefixes match a name, the longest wins.
        """
        self.families[prefix] = LabelledCounters(prefix, family, label, help)


CORE_FAMILIES = (
    LabelledCounters("tls_handshakes_", "tls_handshakes", "result", "TLS handshakes by result: ok, or why one failed."),
    LabelledCounters(
        "tls_handshakes_failed_", "tls_handshakes", "result", "TLS handshakes by result: ok, or why one failed."
    ),
)
"""
The labelled families of the core's own counters (L{netd.tls.protocol}): C{tls_handshakes_ok}
and C{tls_handshakes_failed_REASON} are C{netd_tls_handshakes_total{result="ok"|REASON}}.
"""

CORE_HELP = {
    "connections_accepted": "Stream connections accepted.",
    "connections_refused": "Stream connections closed on accept because max_connections were open.",
    "idle_timeouts": "Stream connections closed after idle_timeout seconds without traffic (less near max_connections).",
    "connections_evicted": "Stream connections closed at max_connections (or out of descriptors) to admit a new one: the stalest.",
    "descriptors_exhausted": "Accepts that failed for want of file descriptors (EMFILE, ENFILE); accepting paused briefly each time.",
    "bytes_received": "Bytes received on stream connections (before TLS is removed).",
    "bytes_sent": "Bytes sent on stream connections (after TLS is added).",
    "proxy_headers_rejected": "Stream connections on haproxy: listen strings closed for a missing or malformed PROXY header.",
    "proxy_headers_untrusted": "Stream connections on haproxy: listen strings closed on accept: their peer is not in proxy_trusted.",
    "frames_rejected": "Stream connections closed for a frame that broke the framing or its max_frame.",
    "datagrams_received": "Datagrams received.",
    "datagrams_sent": "Datagrams sent.",
    "datagrams_send_failed": "Answers the kernel refused to send (full buffer, too big, unreachable), dropped.",
    "datagrams_from_own_port": "Datagrams dropped because their source port is one netd listens on (a loop, or a spoof of one).",
    "datagrams_held_dropped": "Datagrams dropped because a listener's faults already held 1024 back (delay, reorder).",
    "tls_sessions_resumed": "TLS handshakes that resumed an earlier session.",
}
"""
The help text of the counters the core keeps for every service.
"""

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")

MetricType = Literal["counter", "gauge", "histogram"]


def metricName(name: str) -> str:
    """
    A counter or family name made into a valid Prometheus metric name part:
    characters other than letters, digits and C{_} become C{_}.
    """
    return _INVALID_NAME_CHARS.sub("_", name)


def formatFloat(value: float) -> str:
    """
    A number as the exposition format writes it: C{+Inf}, C{-Inf}, C{NaN},
    integers without a fraction, other floats by C{repr}.
    """
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _escapeLabel(value: str) -> str:
    """
    A label value escaped for the text format (backslash, double quote, newline).
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escapeHelp(text: str) -> str:
    """
    A help text escaped for the text format (backslash, newline).
    """
    return text.replace("\\", "\\\\").replace("\n", "\\n")


@attrs.define
class _Family:
    """
    One metric family being gathered: its type, help and samples.
    """

    name: str
    type: MetricType
    help: str
    samples: list[tuple[str, tuple[tuple[str, str], ...], float]] = attrs.Factory(list)


class Exposition:
    """
    Metric families gathered from every service, rendered as one Prometheus text
    exposition (format 0.0.4), each family once with its samples together.
    """

    def __init__(self, prefix: str = "netd_") -> None:
        self.prefix = prefix
        self._families: dict[str, _Family] = {}

    def _family(self, name: str, type: MetricType, help: str) -> _Family:
        """
        The family called C{name}, made on first use.
        """
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _Family(name, type, help)
        elif not family.help:
            family.help = help
        return family

    def gauge(self, name: str, value: float, help: str, labels: Mapping[str, str] | None = None) -> None:
        """
        Add one sample of the gauge C{netd_NAME}.
        """
        full = self.prefix + metricName(name)
        self._family(full, "gauge", help).samples.append((full, tuple((labels or {}).items()), value))

    def counter(self, name: str, value: float, help: str, labels: Mapping[str, str] | None = None) -> None:
        """
        Add one sample of the counter C{netd_NAME_total}.
        """
        base = metricName(name)
        if base.endswith("_total"):
            base = base[: -len("_total")]
        full = f"{self.prefix}{base}_total"
        self._family(full, "counter", help).samples.append((full, tuple((labels or {}).items()), value))

    def histogram(self, name: str, histogram: Histogram, labels: Mapping[str, str] | None = None) -> None:
        """
        Add the samples of one histogram of the family C{netd_NAME}: its
        cumulative C{_bucket}s (label C{le}), C{_sum} and C{_count}.
        """
        full = self.prefix + metricName(name)
        family = self._family(full, "histogram", histogram.help)
        base = tuple((labels or {}).items())
        for bound, count in histogram.cumulative():
            family.samples.append((full + "_bucket", (*base, ("le", formatFloat(bound))), count))
        family.samples.append((full + "_sum", base, histogram.sum))
        family.samples.append((full + "_count", base, histogram.count))

    def counters(
        self,
        counters: Counters,
        labels: Mapping[str, str],
        *,
        zeros: Iterable[str] = (),
        families: Iterable[LabelledCounters] = CORE_FAMILIES,
        help: Mapping[str, str] = CORE_HELP,
    ) -> None:
        """
        Add every counter, histogram and gauge of one service.

        @param labels: the labels every sample gets (C{service}).
        @param zeros: counters exposed even while they are zero, so that rates
            over them start from the first scrape.
        @param families: the core's labelled families; the counters' own
            declarations are added to them.
        """
        prefixes = {f.prefix: f for f in families}
        prefixes.update(counters.families)
        ordered = sorted(prefixes, key=len, reverse=True)
        values = {name: 0 for name in zeros}
        values.update(counters.snapshot())
        for name, value in sorted(values.items()):
            prefix = next((p for p in ordered if name.startswith(p)), None)
            if prefix is None:
                text = help.get(name) or f"netd counter {name!r} of each service."
                self.counter(name, value, text, labels)
            else:
                declared = prefixes[prefix]
                self.counter(declared.family, value, declared.help, {**labels, declared.label: name[len(prefix) :]})
        for name, histogram in sorted(counters.histograms.items()):
            self.histogram(name, histogram, labels)
        for name, (read, text) in sorted(counters.gauges.items()):
            self.gauge(name, read(), text, labels)

    def render(self) -> str:
        """
        The exposition text, families in the order they were first added.
        """
        lines = []
        for family in self._families.values():
            if family.help:
                lines.append(f"# HELP {family.name} {_escapeHelp(family.help)}")
            lines.append(f"# TYPE {family.name} {family.type}")
            for name, labels, value in family.samples:
                if labels:
                    rendered = ",".join(f'{metricName(k)}="{_escapeLabel(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{rendered}}} {formatFloat(value)}")
                else:
                    lines.append(f"{name} {formatFloat(value)}")
        return "\n".join(lines) + "\n" if lines else ""
