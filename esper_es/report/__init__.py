"""`esper-es report`: a self-contained HTML page and PNG plots of a run, from its log alone.

`model` extracts the numbers from the run database, `plots` draws them (matplotlib, Agg),
`html` renders the page; `write_report` does all three.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from esper_es.report.model import RunReport, extract
from esper_es.store.backends import open_store

__all__ = ["ReportFiles", "RunReport", "extract", "write_report"]


@attrs.frozen
class ReportFiles:
    """What `write_report` wrote, and the model it wrote it from."""

    html: Path
    images: tuple[Path, ...]
    report: RunReport


def write_report(db_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> ReportFiles:
    """Write `index.html` and the plots as PNG files into `out_dir` (created if missing)."""
    from esper_es.report.html import render
    from esper_es.report.plots import render_all

    with open_store(db_path, readonly=True) as db:
        report = extract(db)
    images = render_all(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in images.items():
        path = out / name
        path.write_bytes(data)
        paths.append(path)
    html = out / "index.html"
    html.write_text(render(report, images), encoding="utf-8")
    return ReportFiles(html, tuple(paths), report)
