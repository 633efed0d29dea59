"""What a demo suite is: its rows, the rows each of its flags adds, and the function that runs
them (:class:`Suite`). The suites themselves are the modules of :mod:`feds2r.demo.suites`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from feds2r.demo.rows import Row
from feds2r.errors import Feds2rError


@dataclass(frozen=True)
class Suite:
    """One suite of ``feds2r demo --suite NAME``."""

    name: str
    """Its name on the command line."""
    summary: str
    """One line: the setting it compares its methods in."""
    run: Callable[..., dict[str, Any]]
    """``run(profile, out, *, seed, world, progress, pretrained, rows)``: the whole suite into
    OUT; returns the results (``OUT/results.json``)."""
    rows: tuple[Row, ...]
    """The rows of its default table."""
    extra_rows: Mapping[str, tuple[Row, ...]] = field(default_factory=dict)
    """The rows each of its flags adds (by the flag's ``dest``, e.g. ``self_train``)."""
    partitions: tuple[str, ...] = ()
    """The values its ``partition`` option takes (``--partition``), the default first; empty:
    the suite has no such option."""

    def rows_with(self, flags: Iterable[str]) -> tuple[Row, ...]:
        """The default rows, then those of each flag given (in :attr:`extra_rows`' order)."""
        flags = set(flags)
        unknown = sorted(flags - set(self.extra_rows))
        if unknown:
            given = ", ".join("--" + f.replace("_", "-") for f in unknown)
            valid = ", ".join("--" + f.replace("_", "-") for f in self.extra_rows) or "none"
            raise Feds2rError(f"{given} is not a flag of the {self.name} suite; its flags: {valid}")
        extra = (row for flag, rows in self.extra_rows.items() if flag in flags for row in rows)
        return (*self.rows, *extra)

    def check_partition(self, partition: str) -> str:
        """``partition`` if this suite takes it, else a :class:`Feds2rError` naming the valid
        ones."""
        if not self.partitions:
            raise Feds2rError(f"--partition is not a flag of the {self.name} suite")
        if partition not in self.partitions:
            raise Feds2rError(
                f"--partition {partition} is not a partition of the {self.name} suite; its "
                f"partitions: {', '.join(self.partitions)}"
            )
        return partition
