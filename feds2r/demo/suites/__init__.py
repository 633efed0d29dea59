"""The demo's suites by name (``feds2r demo --suite NAME``): each is one module of this package
whose ``SUITE`` (a :class:`~feds2r.demo.suite.Suite`) names its rows and its run. Adding a suite
is adding its module and its entry in :data:`SUITES`."""

from __future__ import annotations

from feds2r.demo.suite import Suite
from feds2r.demo.suites import feds2r, fedseg, fuss
from feds2r.errors import Feds2rError

SUITES: dict[str, Suite] = {
    "feds2r": feds2r.SUITE,
    "fuss": fuss.SUITE,
    "fedseg": fedseg.SUITE,
}
"""Every suite by name; ``feds2r`` is the default."""


def get_suite(name: str) -> Suite:
    """The suite ``name``; an error listing the valid ones otherwise."""
    if name not in SUITES:
        raise Feds2rError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    return SUITES[name]
