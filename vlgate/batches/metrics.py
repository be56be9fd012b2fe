"""This replica's batch work in /metrics: lines running now, lines finished by result, tries again, preemptions.

Jobs by status and the store's size are the store's own collector (`store/metrics.py`); progress of one
job is its `request_counts` (GET /v1/batches/{id}).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vlgate.batches.worker import BatchWorker


class BatchCollector(Collector):
    def __init__(self, worker: BatchWorker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        w, stats = self.worker, self.worker.stats
        yield GaugeMetricFamily("vlgate_batch_lines_running", "Batch lines this replica runs now", value=len(w.running))
        lines = CounterMetricFamily("vlgate_batch_lines", "Batch lines this replica finished, by result (lost: "
                                    "taken over by another worker, or the batch was cancelled)", labels=["result"])
        for result, n in (("completed", stats.completed), ("failed", stats.failed), ("lost", stats.lost)):
            lines.add_metric([result], n)
        yield lines
        yield CounterMetricFamily("vlgate_batch_line_retries", "Batch line tries answered 429/503, tried again later",
                                  value=stats.retried)
        yield CounterMetricFamily("vlgate_batch_line_preemptions", "Batch lines that left their slot to a queued "
                                  "interactive request (run again later)", value=stats.preempted)

    def describe(self) -> list[Metric]:
        return []
