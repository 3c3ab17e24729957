"""Metric logging: a CSV file always (appending on resume), TensorBoard when asked.

Library code never prints; training loops hand their metric dicts to a :class:`MetricLogger`.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

METRICS_CSV = "metrics.csv"


def _scalar(value: Any) -> float | None:
    """A float for numbers and 0-d tensors/arrays; ``None`` for anything else (skipped)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        try:
            return float(item())
        except (TypeError, ValueError):
            return None
    return None


class MetricLogger:
    """Log scalar metrics by step to ``out_dir/metrics.csv`` (and TensorBoard when asked).

    The CSV has a ``step`` column plus one column per metric name. When a later call brings a new
    metric name, the file is rewritten once with the wider header (old rows get empty cells), so
    the CSV stays readable by ``csv.DictReader`` / pandas. An existing file is appended to (resume).

    Args:
        out_dir: directory for ``metrics.csv`` (and the TensorBoard event files).
        tensorboard: also write TensorBoard scalars (needs the ``tensorboard`` package).
        start_step: the step this run starts from (0, or a resumed checkpoint's). Rows of an existing
            CSV at or after it were logged after that checkpoint by a run that was then killed; they
            are dropped, as is a row cut short by the kill, so a resumed run's CSV has each step once.
    """

    def __init__(
        self, out_dir: str | os.PathLike, tensorboard: bool = False, start_step: int | None = None
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out_dir / METRICS_CSV
        self._fields: list[str] = ["step"]
        if self.csv_path.exists() and self.csv_path.stat().st_size > 0:
            with open(self.csv_path, newline="") as f:
                header = next(csv.reader(f), None)
            if header and header[0] == "step":
                self._fields = list(header)
                if start_step is not None:
                    self._truncate(start_step)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError(
                    "logger=tensorboard needs the 'tensorboard' package; install it "
                    "(pip install 'jepa-agent[tensorboard]') or use the CSV logger"
                ) from e
            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tb"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one row: ``step`` plus every scalar in ``metrics`` (non-scalars are skipped)."""
        row = {k: v for k, v in ((k, _scalar(v)) for k, v in metrics.items()) if v is not None}
        new = [k for k in row if k not in self._fields]
        if new:
            self._widen(self._fields + new)
        write_header = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields)
            if write_header:
                w.writeheader()
            w.writerow({"step": int(step), **{k: _fmt(v) for k, v in row.items()}})
        if self._tb is not None:
            for k, v in row.items():
                self._tb.add_scalar(k, v, int(step))

    def _truncate(self, start_step: int) -> None:
        """Keep only whole rows with ``step < start_step`` (atomic rewrite, only when something goes)."""
        text = self.csv_path.read_text()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # a row cut short by a kill

        def keep(line: str) -> bool:
            step = line.split(",", 1)[0]
            return step.isdigit() and int(step) < start_step

        kept = lines[:1] + [ln for ln in lines[1:] if keep(ln)]
        if len(kept) == len(text.splitlines(keepends=True)):
            return
        tmp = self.csv_path.with_suffix(".csv.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.csv_path)

    def _widen(self, fields: list[str]) -> None:
        rows: list[dict[str, str]] = []
        if self.csv_path.exists() and self.csv_path.stat().st_size > 0:
            with open(self.csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
        self._fields = fields
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.csv_path)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the CSV is closed after every row)."""
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(v: float) -> str:
    return repr(v) if math.isfinite(v) else str(v)


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """Read a ``metrics.csv`` (file or its directory) back as a list of ``{name: float}`` rows."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_CSV
    with open(p, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
