"""infergate.sources: what writes the datastore from the outside world.

``dialects`` maps model-server Prometheus text to metrics snapshots, ``scraper`` polls every
endpoint for metrics, health and served models, ``manifests`` loads pools, endpoints, objectives
and rewrites from manifest files.
"""

from infergate.sources.dialects import parse_metrics
from infergate.sources.manifests import apply_manifests
from infergate.sources.scraper import MetricsScraper

__all__ = ["MetricsScraper", "apply_manifests", "parse_metrics"]
