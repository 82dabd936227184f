"""The service's own Prometheus metrics, beside BentoML's request metrics on /metrics.

Created when a worker starts, not at import: BentoML sets up Prometheus' multiprocess directory in
the worker after the service module is imported, and metrics created before that are never exported.
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class ServiceMetrics:
    batch_images: object  # Histogram: images per model run
    rejected: object  # Counter: refused requests, by endpoint and HTTP status
    model_info: object  # Gauge (1): which model and provider this service runs

    def observe_batch(self, images: int) -> None:
        self.batch_images.observe(images)

    def count_rejection(self, endpoint: str, status: int) -> None:
        self.rejected.labels(endpoint=endpoint, status=str(status)).inc()


def create_metrics() -> ServiceMetrics:
    from prometheus_client import Counter, Gauge, Histogram

    return ServiceMetrics(
        batch_images=Histogram(
            "transferline_batch_images",
            "Images per ONNX Runtime run (adaptive batching across requests)",
            buckets=BATCH_BUCKETS,
        ),
        rejected=Counter(
            "transferline_rejected_requests",
            "Requests answered with an error status, by endpoint and status",
            labelnames=("endpoint", "status"),
        ),
        model_info=Gauge(
            "transferline_model_info",
            "The model being served (value 1), with its tag, data version and execution provider",
            labelnames=("model_tag", "data_version", "provider"),
            multiprocess_mode="max",
        ),
    )
