"""Comparison reports of first layers: ``index.html``, ``report.json``, ``profiles.csv``, PNGs.

>>> from firstlayer.report import StatsProvider, build_report, resolve_models  # doctest: +SKIP
>>> models = resolve_models(["runs/true", "runs/random"])  # doctest: +SKIP
>>> build_report(models, "report", provider=StatsProvider(dataset="sample"))  # doctest: +SKIP

matplotlib is imported only while figures are drawn.
"""

from __future__ import annotations

from firstlayer.report.build import (
    REPORT_FORMAT,
    REPORT_VERSION,
    Report,
    build_report,
    dataset_description,
    versions,
)
from firstlayer.report.compute import StatsProvider, compute_report, group_stats, stats_sha256
from firstlayer.report.inputs import (
    NORMALIZATIONS,
    ModelInput,
    Normalization,
    file_sha256,
    parse_normalization,
    resolve_model,
    resolve_models,
)

__all__ = [
    "NORMALIZATIONS",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "ModelInput",
    "Normalization",
    "Report",
    "StatsProvider",
    "build_report",
    "compute_report",
    "dataset_description",
    "file_sha256",
    "group_stats",
    "parse_normalization",
    "resolve_model",
    "resolve_models",
    "stats_sha256",
    "versions",
]
