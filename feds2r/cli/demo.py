"""``feds2r demo``: the whole one-shot federation on the built-in world, with its baselines."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from feds2r.cli.flags import add_quiet, command


def demo(
    profile: str,
    out: str,
    seed: int,
    world: Path | None,
    pretrained: bool,
    self_train: bool,
    lite: bool,
    multi_round: bool,
    progress: bool,
    suite: str = "feds2r",
    partition: str | None = None,
) -> int:
    """Run the suite ``suite`` with the profile ``profile`` into ``out`` and print its table."""
    # imported here, not at the top: keeps `feds2r --help` fast (the demo imports every stage)
    from feds2r.demo import get_suite, results_table

    chosen = get_suite(suite)
    flags = {"self_train": self_train, "lite": lite, "multi_round": multi_round}
    rows = chosen.rows_with(flag for flag, given in flags.items() if given)
    options = {}
    if partition is not None:
        options["partition"] = chosen.check_partition(partition)
    results = chosen.run(
        profile,
        out,
        seed=seed,
        world=world,
        progress=progress,
        pretrained=pretrained,
        rows=rows,
        **options,
    )
    print()
    print(results_table(results))
    if "unstable_classes" in results:
        print(f"\nunstable classes: {', '.join(results['unstable_classes'])}")
    print(f"total time {results['timing_s']['total']:.0f} s; report: {Path(out) / 'report.md'}")
    return 0


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "demo",
        demo,
        help="run the whole one-shot federation on the built-in world, with baselines",
        description="Build the built-in world if missing, train one client per synthetic "
        "domain from one common initial model, run the FedS2R server (inconsistency, generated "
        "images, distillation with feature fusion) and the baselines, and evaluate everything "
        "on the five real-like test domains. Writes OUT/results.json, OUT/report.md (table, "
        "per-class IoU, inconsistency chart, sample predictions), every checkpoint and "
        "OUT/config.toml. Running again into the same OUT reuses every finished training (same "
        "config and inputs) and trains only what is new, e.g. rows added with --self-train or "
        "--lite. Profiles: default (seg-effl0 from real ImageNet weights, chosen on dev; about "
        "15 minutes on 2 CPU cores), public (m2f-cpu from the public stand-in backbone feds2r "
        "ships, at the same wall time), imagenet (m2f-effl0: Mask2Former on the ImageNet "
        "backbone), quick (a smoke test on m2f-cpu, about 2 minutes), full (the public start "
        "with a larger world and budgets). Suites (--suite): "
        "feds2r, the default, described here; fuss, clients without labels (FUSS: local-only, "
        "fedavg, fuss, centralized after a cluster-to-class matching fitted on dev; "
        "--partition domain|iid; docs/fuss.md); fedseg, FedSeg's class-heterogeneous clients "
        "(19 clients of one or two classes: fedavg-ce, fedavg-backce, fedprox-backce, "
        "fedseg; --partition noniid1|noniid2|iid; docs/fedseg.md).",
        epilog=textwrap.dedent("""\
            examples:
              feds2r demo --out runs/demo
              feds2r demo --profile quick --out /tmp/demo-quick
              feds2r demo --profile public --out runs/demo-public --world runs/demo/world
              feds2r demo --profile default --seed 1 --out runs/demo-s1 --world runs/demo/world
              feds2r demo --self-train --out runs/demo-st
              feds2r demo --self-train --lite --out runs/demo   # run again: adds only the new rows
              feds2r demo --multi-round --out runs/demo
              feds2r demo --suite fuss --profile quick --out /tmp/fuss
              feds2r demo --suite fuss --partition iid --out runs/fuss-iid
              feds2r demo --suite fedseg --partition noniid2 --out runs/fedseg-n2
            """),
    )
    p.add_argument(
        "--suite",
        default="feds2r",
        help="the suite of methods to run (default feds2r: FedS2R's one-shot federation, its "
        "baselines and upper bounds; docs/demo.md lists the suites)",
    )
    p.add_argument(
        "--profile",
        default="default",
        choices=("default", "public", "imagenet", "quick", "full"),
        help="sizes, budgets and the models' start (default: seg-effl0 from ImageNet weights)",
    )
    p.add_argument(
        "--partition",
        choices=("noniid1", "noniid2", "iid", "domain"),
        help="(fedseg suite) how the 19 clients split the cityscapes-like train split: one "
        "class each (noniid1, the default), two classes each (noniid2) or at random, every "
        "class annotated (iid); (fuss suite) how the three clients split the synthetic train "
        "images: one domain each (domain, the default) or at random (iid)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of every method (the world: 0)")
    p.add_argument("--world", type=Path, help="reuse a demo world folder (default OUT/world)")
    p.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="start every model from random weights instead of the preset's pretrained start",
    )
    p.add_argument(
        "--self-train",
        action="store_true",
        help="(feds2r suite) "
        "add the rows feds2r+st and feds2r+st-no-refine: FedS2R's model self-trained on "
        "the server's images (a mean teacher, ClassMix; with and without pseudo-labels refined "
        "by superpixels; docs/method.md); about 5 more minutes with the default profile",
    )
    p.add_argument(
        "--lite",
        action="store_true",
        help="(feds2r suite) "
        "add the rows feds2r-lite (the profile's small preset, seg-effl0-tiny by default, "
        "distilled through FedS2R's model as a large student, DUDA) and direct-lite (the same "
        "preset distilled straight from the clients); about 4 more minutes with the default "
        "profile",
    )
    p.add_argument(
        "--multi-round",
        action="store_true",
        help="(feds2r suite) "
        "add the rows fedavg-5, fedprox-5 and fedseg-5: multi-round federations on "
        "Flower's strategies at the clients' total steps (5 rounds of a fifth each), with what "
        "every method communicated; needs Flower (pip install 'feds2r[flower]'); about 12-15 "
        "more minutes (measured with the public profile)",
    )
    add_quiet(p, None)
