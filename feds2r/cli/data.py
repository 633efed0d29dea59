"""``feds2r data formats | check | synth`` and ``feds2r models``."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from feds2r.cli.flags import add_quiet, command, count_type, size_type
from feds2r.cli.output import write_json
from feds2r.errors import Feds2rError


def data_formats(as_json: bool) -> int:
    """List every dataset format with its layout (``--json``: machine-readable)."""
    from feds2r.data.formats import FORMATS

    if as_json:
        print(
            json.dumps(
                {
                    n: {
                        "kind": f.kind,
                        "title": f.title,
                        "splits": list(f.splits),
                        "default_split": f.default_split,
                        "layout": f.layout,
                        "options": {k: list(v) for k, v in f.options.items()},
                        "source": f.source,
                    }
                    for n, f in FORMATS.items()
                },
                indent=2,
            )
        )
        return 0
    for name, fmt in FORMATS.items():
        print(f"{name:<11} {fmt.title}  [{fmt.kind}]")
        print(f"{'':<11} splits: {', '.join(fmt.splits)} (default {fmt.default_split})")
        print(textwrap.indent(fmt.layout, " " * 12))
        if fmt.source:
            print(f"{'':<11} source: {fmt.source}")
        print()
    print(
        "A dataset is named FORMAT:PATH, with options after '?', e.g.\n"
        "  cityscapes:/data/cityscapes?split=val   acdc:/data/acdc?split=val&condition=fog"
    )
    return 0


def data_check(
    spec: str,
    split: str | None,
    condition: str | None,
    labels: bool,
    json_path: str | None,
    progress: bool,
) -> int:
    """Check a dataset; exit status 1 when it has defects."""
    from feds2r.data.check import check_dataset

    options = {"condition": condition} if condition else {}
    report = check_dataset(spec, split, labels=labels, progress=progress, **options)
    if json_path:
        write_json(report.to_dict(), json_path)
    if json_path != "-":
        print(report.to_text())
    return 0 if report.ok else 1


def data_synth(
    all_domains: bool,
    domain: str | None,
    split: str,
    num: int | None,
    out: str | None,
    force: bool,
    size: tuple[int, int],
    seed: int,
    scale: float,
    list_domains: bool,
    progress: bool,
) -> int:
    """Write the built-in world (every domain, or one split of one domain)."""
    from feds2r.data.world import DOMAINS, synth_all, synth_domain

    if list_domains:
        for name, dom in DOMAINS.items():
            splits = ", ".join(f"{s} {n}" for s, n in dom.splits.items())
            print(f"{name:<16} {dom.kind:<9} format {dom.format:<10} default splits: {splits}")
        return 0
    if out is None:
        raise Feds2rError("data synth: --out DIR is required (or --list to see the domains)")
    if all_domains == bool(domain):
        raise Feds2rError("data synth: give either --all or --domain NAME (see --help)")
    if not scale > 0:
        raise Feds2rError(f"data synth: --scale must be positive, got {scale}")
    if all_domains:
        summaries = synth_all(
            out, size=size, seed=seed, scale=scale, progress=progress, force=force
        )
    else:
        if domain not in DOMAINS:
            raise Feds2rError(f"unknown domain {domain!r}; valid: {', '.join(DOMAINS)}")
        dom = DOMAINS[domain]
        summaries = [
            synth_domain(
                dom,
                Path(out),
                split=split,
                num=num if num is not None else dom.splits.get(split, 100),
                size=size,
                seed=seed,
                progress=progress,
                force=force,
            )
        ]
    total = sum(s["count"] for s in summaries)
    seconds = sum(s["seconds"] for s in summaries)
    print(
        f"\nwrote {total} image/label pairs in {seconds:.1f} s "
        f"({total / max(seconds, 1e-9):.0f} pairs/s) at {size[0]}x{size[1]}:"
    )
    print(f"  {'domain':<16} {'kind':<9} {'split':<6} {'count':>6}  spec")
    for s in summaries:
        print(f"  {s['domain']:<16} {s['kind']:<9} {s['split']:<6} {s['count']:>6}  {s['spec']}")
    return 0


def models() -> int:
    """List the model presets."""
    from feds2r.models import PRESETS

    for name, preset in PRESETS.items():
        print(f"{name:<14} {preset.family:<11} {preset.scale:<5}  {preset.description}")
    return 0


# ----------------------------------------------------------------------------- parsers


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data",
        help="datasets: formats, checks, the built-in world",
        description="Work with datasets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = command(
        data_sub,
        "formats",
        data_formats,
        help="list the dataset formats and their on-disk layouts",
        description="List every dataset format feds2r reads, with its expected layout.",
        epilog="examples:\n  feds2r data formats\n  feds2r data formats --json",
    )
    p.add_argument(
        "--json", dest="as_json", action="store_true", help="print machine-readable JSON"
    )

    p = command(
        data_sub,
        "check",
        data_check,
        help="validate a dataset tree and report what is wrong",
        description="Pair every image with its label, read every file, and report counts, image "
        "sizes and the class pixel histogram. Names each defect: missing folders, unpaired files, "
        "unreadable or truncated images, label values outside the format's id table, image/label "
        "size mismatch, a partial output that a feds2r command stopped writing. Exit status 0: "
        "clean; 1: defects found; 2: a bad request (format, split, option, --json path).",
        epilog=textwrap.dedent("""\
            examples:
              feds2r data check gta5:/data/gta5
              feds2r data check cityscapes:/data/cityscapes?split=val --json report.json
              feds2r data check acdc:/data/acdc --split val --condition night
              feds2r data check cityscapes:/data/cityscapes --no-labels   # server images only
            """),
    )
    p.add_argument("spec", help="dataset spec FORMAT:PATH (see `feds2r data formats`)")
    p.add_argument("--split", help="split to check (default: the spec's or the format's)")
    p.add_argument("--condition", help="ACDC condition: fog, night, rain, snow or all")
    p.add_argument("--no-labels", dest="labels", action="store_false", help="check images only")
    p.add_argument(
        "--json",
        dest="json_path",
        metavar="PATH",
        help="also write the report as JSON ('-': stdout)",
    )
    add_quiet(p, "no progress bar")

    p = command(
        data_sub,
        "synth",
        data_synth,
        help="write the built-in procedural world in the real datasets' formats",
        description="Render procedural street scenes and write them in the real datasets' "
        "on-disk formats: 3 synthetic client domains (gta5-like, synthia-like, synscapes-like) and "
        "5 real-like domains (cityscapes-like, bdd-like, mapillary-like, idd-like, acdc-like). "
        "Deterministic: the same seed and arguments give byte-identical files.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r data synth --all --out data/world              # every domain, default sizes
              feds2r data synth --all --out /tmp/tiny --scale 0.05 --size 128x256
              feds2r data synth --domain gta5-like --split train --num 500 --out data/gta5-like
              feds2r data synth --list                              # domains and default splits
            """),
    )
    p.add_argument(
        "--all",
        dest="all_domains",
        action="store_true",
        help="write every domain with default splits",
    )
    p.add_argument("--domain", help="write one domain (see --list)")
    p.add_argument("--split", default="train", help="split for --domain (default: train)")
    p.add_argument(
        "--num", type=count_type(1), help="images for --domain (default: the domain's size)"
    )
    p.add_argument(
        "--out",
        help="output folder (for --all: one sub-folder per domain); new, empty, or a set of the "
        "same domain (another split is added; the same split is rewritten with the same --num, "
        "--size and --seed)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing set of another domain, or a split written with other settings",
    )
    p.add_argument("--size", type=size_type, default=(256, 512), help="HxW (default 256x512)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--scale", type=float, default=1.0, help="for --all: multiply split sizes")
    p.add_argument(
        "--list", dest="list_domains", action="store_true", help="list the domains and exit"
    )
    add_quiet(p, "no progress bars")


def add_models_command(sub: argparse._SubParsersAction) -> None:
    command(
        sub,
        "models",
        models,
        help="list the model presets",
        description="List every model preset: Mask2Former (mask classification) and SegFormer "
        "(per-pixel), CPU-sized and paper-scale. All are built from configs; nothing is "
        "downloaded.",
        epilog="examples:\n  feds2r models",
    )
