"""The one reader of Prometheus text in the tests: prometheus_client's own parser
(text_string_to_metric_families), never lines split by hand.

    metrics = read_metrics(server)          # a server (its metrics_url) or a URL
    metrics.total("nnserve_requests_total", model="mlp", code="OK")

Names are those of the exposed series, with their suffixes (`_total`, `_bucket`,
`_count`, `_sum`); labels select the series that carry them with these values, and may
leave others out. Label values are the exposed strings (`le="1.0"`).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

Labels = tuple[tuple[str, str], ...]


class Scraped(Protocol):
    """Anything with a /metrics URL: RunningServer, ServerProcess."""

    @property
    def metrics_url(self) -> str: ...


def scrape(source: Scraped | str, timeout: float = 10.0) -> str:
    """The exposition text at `source` (a server's metrics_url, or a URL)."""
    url = source if isinstance(source, str) else source.metrics_url
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


@dataclass(frozen=True)
class Metrics:
    """Every sample of one scrape."""

    samples: tuple[Sample, ...]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        return cls(
            tuple(
                sample
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            )
        )

    def select(self, name: str, **labels: str) -> list[Sample]:
        """The samples of series `name` whose labels include `labels`."""
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def values(self, name: str, **labels: str) -> list[float]:
        return [s.value for s in self.select(name, **labels)]

    def total(self, name: str, **labels: str) -> float:
        """The sum over the selected series; 0.0 when there is none."""
        return float(sum(self.values(name, **labels)))

    def value(self, name: str, **labels: str) -> float:
        """The value of the one selected series; LookupError when there is none or more."""
        found = self.select(name, **labels)
        if len(found) != 1:
            raise LookupError(f"{len(found)} series {name} with {labels}: {found}")
        return found[0].value

    def by_labels(self, name: str) -> dict[Labels, float]:
        """{sorted (label, value) pairs: value} for every series `name`."""
        return {tuple(sorted(s.labels.items())): s.value for s in self.select(name)}


def read_metrics(source: Scraped | str, timeout: float = 10.0) -> Metrics:
    """Scrape `source` and parse it."""
    return Metrics.parse(scrape(source, timeout))
