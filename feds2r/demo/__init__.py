"""``feds2r demo``: suites of methods run end to end on the built-in world, each with its table.

A suite (:data:`SUITES`, ``feds2r demo --suite NAME``) is a list of rows, each one method ("which
stages with which config", :class:`Row`), and a run that builds and evaluates them. The FedS2R
suite (:mod:`feds2r.demo.suites.feds2r`, the default) is the one-shot federation with its
baselines. Every suite shares the modules of this package:

- :mod:`~feds2r.demo.profiles`: the sizes and budgets of a run (``--profile``);
- :mod:`~feds2r.demo.world`: the built-in world, built once per size;
- :mod:`~feds2r.demo.stages`: OUT, the stage clock, the initial model and the clients;
- :mod:`~feds2r.demo.rows`: the rows and the builder of each row kind;
- :mod:`~feds2r.demo.curves`: the learning curves on the dev split;
- :mod:`~feds2r.demo.evaluation`: every method on the test domains;
- :mod:`~feds2r.demo.communication`: what each federated row moved (Flower's messages);
- :mod:`~feds2r.demo.results`: ``results.json``, the confusions, the paired intervals;
- :mod:`~feds2r.demo.report` and :mod:`~feds2r.demo.figures`: ``report.md`` and its figures.
"""

from __future__ import annotations

from feds2r.demo.curves import merge_curves
from feds2r.demo.evaluation import LABEL_FREE, ORACLE
from feds2r.demo.profiles import PROFILES, Profile, WorldSizes, make_profile
from feds2r.demo.report import results_table
from feds2r.demo.rows import ROW_KINDS, Row
from feds2r.demo.suite import Suite
from feds2r.demo.suites import SUITES, get_suite
from feds2r.demo.suites.feds2r import (
    COMPARISONS,
    LITE_ROWS,
    METHODS,
    ROUND_ROWS,
    ROUNDS,
    ROWS,
    SELFTRAIN_ROWS,
    run_demo,
)
from feds2r.demo.world import build_world, world_spec

__all__ = [
    "COMPARISONS",
    "LABEL_FREE",
    "LITE_ROWS",
    "METHODS",
    "ORACLE",
    "PROFILES",
    "ROUNDS",
    "ROUND_ROWS",
    "ROWS",
    "ROW_KINDS",
    "SELFTRAIN_ROWS",
    "SUITES",
    "Profile",
    "Row",
    "Suite",
    "WorldSizes",
    "build_world",
    "get_suite",
    "make_profile",
    "merge_curves",
    "results_table",
    "run_demo",
    "world_spec",
]
