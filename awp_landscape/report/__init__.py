"""The report: collect the measures' files, draw their sections, write HTML and markdown."""

from awp_landscape.report.collect import Results, Run, collect, measurements
from awp_landscape.report.document import build_document, write_report

__all__ = ["Results", "Run", "build_document", "collect", "measurements", "write_report"]
