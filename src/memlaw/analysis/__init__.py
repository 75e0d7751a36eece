"""Phase-transition analysis of a sweep: earliest stubborn token vs first free-run failure."""

from .phase import (
    PhaseAnalysis,
    analyze,
    bin_profile,
    certificate_check,
    earliest_stubborn,
    failure_histograms,
    format_summary,
    load_or_analyze,
    load_results,
    probability_grid,
    read_analysis,
    spearman,
    write_analysis,
)

__all__ = [
    "PhaseAnalysis",
    "analyze",
    "bin_profile",
    "certificate_check",
    "earliest_stubborn",
    "failure_histograms",
    "format_summary",
    "load_or_analyze",
    "load_results",
    "probability_grid",
    "read_analysis",
    "spearman",
    "write_analysis",
]
