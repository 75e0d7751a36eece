"""The sweep report: figures (report.figures) assembled into one self-contained HTML page (report.html)."""

from .html import build_report

__all__ = ["build_report"]
