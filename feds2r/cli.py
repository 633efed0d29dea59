"""The ``feds2r`` command line: each subcommand parses its arguments and calls the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from pathlib import Path

from feds2r.errors import Feds2rError


def _size(text: str) -> tuple[int, int]:
    """An argparse type: ``HxW`` (see :func:`feds2r.config.parse_size`), both sides even, >= 32."""
    from feds2r.config import parse_size

    try:
        h, w = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if h < 32 or w < 32 or h % 2 or w % 2:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be even and >= 32")
    return h, w


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"  # how argparse names the type in its messages
    return parse


def _write_json(data: dict, dest: str) -> None:
    text = json.dumps(data, indent=2)
    if dest == "-":
        print(text)
        return
    from feds2r.io import write_atomic

    write_atomic(Path(dest), (text + "\n").encode())


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse a bad ``--out``/``--app`` folder or ``--json`` file before any work, for every
    command (a file where a folder is needed, a folder where a file is, a read-only place)."""
    from feds2r.io import check_output_dir, check_output_file

    if getattr(args, "federate_command", None) == "app":
        folders = {"--app": args.app}  # its --out is a path on the SuperLink's machine
    else:
        folders = {"--out": getattr(args, "out", None)}
    for flag, folder in folders.items():
        if isinstance(folder, str | Path):
            check_output_dir(folder, flag)
    dest = getattr(args, "json", None)
    if isinstance(dest, str) and dest != "-":
        check_output_file(dest, "--json")


# ----------------------------------------------------------------------------- data formats


def cmd_data_formats(args: argparse.Namespace) -> int:
    from feds2r.data.formats import FORMATS

    if args.json:
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


# ----------------------------------------------------------------------------- data check


def cmd_data_check(args: argparse.Namespace) -> int:
    from feds2r.data.check import check_dataset

    options = {"condition": args.condition} if args.condition else {}
    report = check_dataset(
        args.spec, args.split, labels=not args.no_labels, progress=not args.quiet, **options
    )
    if args.json:
        _write_json(report.to_dict(), args.json)
    if args.json != "-":
        print(report.to_text())
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------- data synth


def cmd_data_synth(args: argparse.Namespace) -> int:
    from feds2r.data.world import DOMAINS, synth_all, synth_domain

    if args.list:
        for name, dom in DOMAINS.items():
            splits = ", ".join(f"{s} {n}" for s, n in dom.splits.items())
            print(f"{name:<16} {dom.kind:<9} format {dom.format:<10} default splits: {splits}")
        return 0
    if args.out is None:
        raise Feds2rError("data synth: --out DIR is required (or --list to see the domains)")
    if args.all == bool(args.domain):
        raise Feds2rError("data synth: give either --all or --domain NAME (see --help)")
    if not args.scale > 0:
        raise Feds2rError(f"data synth: --scale must be positive, got {args.scale}")
    if args.all:
        summaries = synth_all(
            args.out,
            size=args.size,
            seed=args.seed,
            scale=args.scale,
            progress=not args.quiet,
            force=args.force,
        )
    else:
        if args.domain not in DOMAINS:
            raise Feds2rError(f"unknown domain {args.domain!r}; valid: {', '.join(DOMAINS)}")
        dom = DOMAINS[args.domain]
        num = args.num if args.num is not None else dom.splits.get(args.split, 100)
        summaries = [
            synth_domain(
                dom,
                Path(args.out),
                split=args.split,
                num=num,
                size=args.size,
                seed=args.seed,
                progress=not args.quiet,
                force=args.force,
            )
        ]
    total = sum(s["count"] for s in summaries)
    seconds = sum(s["seconds"] for s in summaries)
    print(
        f"\nwrote {total} image/label pairs in {seconds:.1f} s "
        f"({total / max(seconds, 1e-9):.0f} pairs/s) at {args.size[0]}x{args.size[1]}:"
    )
    print(f"  {'domain':<16} {'kind':<9} {'split':<6} {'count':>6}  spec")
    for s in summaries:
        print(f"  {s['domain']:<16} {s['kind']:<9} {s['split']:<6} {s['count']:>6}  {s['spec']}")
    return 0


# ----------------------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    from feds2r.models import PRESETS

    for name, preset in PRESETS.items():
        print(f"{name:<14} {preset.family:<11} {preset.scale:<5}  {preset.description}")
    return 0


# ----------------------------------------------------------------------------- client train


def _train_config(args: argparse.Namespace, data: dict):
    """The TrainConfig of a command: the config file's ``[train]`` table ``data``, then flags."""
    from feds2r.config import from_dict
    from feds2r.engine.train import TrainConfig

    data = dict(data)
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "height": args.height,
        "crop": args.crop,
        "device": args.device,
        "warmup_steps": args.warmup_steps,
        "threads": getattr(args, "threads", None),
        "backbone_lr_mult": getattr(args, "backbone_lr_mult", None),
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(TrainConfig, data, source=str(args.config or "arguments"))


def cmd_client_train(args: argparse.Namespace) -> int:
    from feds2r.client import ClientSettings, train_client
    from feds2r.config import from_dict, load_tables
    from feds2r.engine.train import TrainConfig

    tables = {"client": {}, "train": {}}
    if args.config:
        tables = load_tables(
            args.config,
            {"client": ClientSettings, "train": TrainConfig},
            top_level={"preset": "client"},
        )
    flags = {
        "data": args.data,
        "preset": args.preset,
        "backbone_weights": "" if args.no_pretrained else args.backbone_weights,
        "init": args.init,
    }
    client = {**tables["client"], **{k: v for k, v in flags.items() if v is not None}}
    settings = from_dict(ClientSettings, client, source=str(args.config or "arguments"))
    if not settings.data:
        raise Feds2rError("client train: give --data FORMAT:PATH (or data in the [client] table)")
    config = _train_config(args, tables["train"])
    summary = train_client(
        settings.data,
        settings.preset,
        args.out,
        config,
        backbone_weights=settings.backbone_weights or None,
        init=settings.init or None,
        on_error="skip" if args.skip_bad else "raise",
        progress=not args.quiet,
    )
    print(
        f"trained {summary['preset']} on {summary['data']} for {summary['steps']} steps "
        f"in {summary['seconds']:.0f} s; checkpoint: {args.out}"
    )
    return 0


# ----------------------------------------------------------------------------- eval, predict


def _load_model(path: str, device: str):
    from feds2r.engine.checkpoint import load_checkpoint
    from feds2r.engine.device import resolve_device

    dev = resolve_device(device)
    model, meta = load_checkpoint(path, dev)
    return model, meta, dev


def cmd_eval(args: argparse.Namespace) -> int:
    from feds2r.data import open_dataset
    from feds2r.data.labels import CLASS_NAMES
    from feds2r.engine.evaluate import evaluate

    model, meta, dev = _load_model(args.model, args.device)
    sliding = args.crop if args.sliding else None
    rows = []
    for spec in args.data:
        ds = open_dataset(spec, labels=True, on_error="skip" if args.skip_bad else "raise")
        result = evaluate(
            model,
            ds,
            height=args.height,
            sliding=sliding,
            batch_size=args.batch_size,
            device=dev,
            progress=not args.quiet,
        )
        rows.append({"spec": str(ds.spec), **result})
    mean = sum(r["miou"] for r in rows) / len(rows)
    report = {
        "model": str(args.model),
        "preset": meta["preset"],
        "height": args.height,
        "sliding": list(sliding) if sliding else None,
        "datasets": rows,
        "mean_miou": mean,
    }
    if args.json:
        _write_json(report, args.json)
    if args.json == "-":
        return 0
    width = max(len(r["spec"]) for r in rows)
    short = [n[:5] for n in CLASS_NAMES]
    head = f"{'dataset':<{width}}  {'mIoU':>6}  {'acc':>6}"
    if args.per_class:
        head += "  " + " ".join(f"{n:>5}" for n in short)
    print(head)
    for r in rows:
        line = f"{r['spec']:<{width}}  {r['miou']:6.2f}  {r['pixel_acc']:6.2f}"
        if args.per_class:
            line += "  " + " ".join(
                f"{v:5.1f}" if v is not None else "    -" for v in r["per_class"].values()
            )
        print(line)
    if len(rows) > 1:
        print(f"{'mean':<{width}}  {mean:6.2f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from feds2r.data import open_dataset
    from feds2r.engine.evaluate import write_predictions

    model, _, dev = _load_model(args.model, args.device)
    ds = open_dataset(args.data, labels=False, on_error="skip" if args.skip_bad else "raise")
    n = write_predictions(
        model,
        ds,
        args.out,
        height=args.height,
        sliding=args.crop if args.sliding else None,
        device=dev,
        limit=args.limit,
        progress=not args.quiet,
    )
    print(f"wrote {n} predictions (train-id PNGs) and overlays to {args.out}")
    return 0


# ----------------------------------------------------------------------------- server


def cmd_server_inconsistency(args: argparse.Namespace) -> int:
    from feds2r.data import open_dataset
    from feds2r.server import UnstableRule, measure_inconsistency, plot_inconsistency

    if len(args.clients) < 2:
        raise Feds2rError("server inconsistency: give at least two --clients checkpoints")
    models = [_load_model(path, args.device) for path in args.clients]
    dev = models[0][2]
    ds = open_dataset(args.data, labels=False, on_error="skip" if args.skip_bad else "raise")
    rule = UnstableRule(args.std_factor, args.min_unstable, args.max_unstable)
    result = measure_inconsistency(
        [m for m, _, _ in models],
        ds,
        rule=rule,
        height=args.height,
        device=dev,
        progress=not args.quiet,
        names=[str(p) for p in args.clients],
    )
    out = Path(args.out)
    report = {
        **result.to_dict(),
        "data": str(ds.spec),
        "rule": {
            "std_factor": args.std_factor,
            "min_unstable": args.min_unstable,
            "max_unstable": args.max_unstable,
        },
    }
    _write_json(report, str(out / "inconsistency.json"))
    plot_inconsistency(result, out / "inconsistency.png")
    for name, score in sorted(result.scores.items(), key=lambda kv: -(kv[1] or -1)):
        mark = "  unstable" if name in result.unstable else ""
        shown = f"{score:.3f}" if score is not None else "  n/a"
        print(f"{name:<14} {shown}{mark}")
    print(f"threshold {result.threshold:.3f}; unstable: {', '.join(result.unstable) or 'none'}")
    print(f"wrote {out / 'inconsistency.json'} and {out / 'inconsistency.png'}")
    return 0


def cmd_server_augment(args: argparse.Namespace) -> int:
    from feds2r.server.generators import generate_dataset, make_generator
    from feds2r.server.prompts import builtin_prompts, llm_prompts, prompt_counts

    source = Path(args.inconsistency)
    if source.is_dir():
        source = source / "inconsistency.json"
    try:
        info = json.loads(source.read_text())
        scores, unstable = info["scores"], info["unstable_classes"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise Feds2rError(
            f"cannot read an inconsistency report from {source}: {exc}; run "
            "`feds2r server inconsistency` first"
        ) from None
    counts = prompt_counts(scores, unstable, args.num)
    if args.prompts == "llm":
        if not (args.llm_url and args.llm_model):
            raise Feds2rError("--prompts llm needs --llm-url and --llm-model")
        import os

        key = os.environ.get(args.llm_key_env) if args.llm_key_env else None
        prompts = llm_prompts(counts, url=args.llm_url, model=args.llm_model, api_key=key)
    else:
        prompts = builtin_prompts(counts, seed=args.seed)
    kwargs = {}
    if args.generator == "diffusers":
        kwargs = {
            "model_dir": args.model_dir,
            "device": args.device,
            "steps": args.steps,
            "guidance": args.guidance,
        }
    generator = make_generator(args.generator, **kwargs)
    summary = generate_dataset(
        prompts, generator, args.out, size=args.size, seed=args.seed, progress=not args.quiet
    )
    per = ", ".join(f"{c} {n}" for c, n in summary["per_class"].items())
    print(
        f"generated {summary['num_images']} images ({per}) with {generator.name}; "
        f"load them as {summary['spec']}"
    )
    return 0


@dataclasses.dataclass(frozen=True)
class _ServerSettings:
    """The ``[server]`` table of `server distill`'s config.toml: defaults for its flags."""

    clients: tuple[str, ...] = ()
    data: str = ""
    generated: str = ""
    inconsistency: str = ""

    def __post_init__(self) -> None:
        from feds2r.config import check_types

        check_types(self)


def cmd_server_distill(args: argparse.Namespace) -> int:
    from feds2r.config import from_dict, load_tables, to_toml
    from feds2r.engine.train import TrainConfig
    from feds2r.io import write_atomic
    from feds2r.server.distill import DistillConfig, run_distill

    file = {"server": {}, "distill": {}, "train": {}}
    if args.config:
        file = load_tables(
            args.config,
            {"server": _ServerSettings, "distill": DistillConfig, "train": TrainConfig},
        )
    server = from_dict(_ServerSettings, file["server"], source=str(args.config or "arguments"))
    for key in ("clients", "data", "generated", "inconsistency"):  # flags win over [server]
        if getattr(args, key) is None and getattr(server, key):
            setattr(args, key, getattr(server, key))
    if not args.clients or not args.data:
        raise Feds2rError(
            "server distill: give --clients and --data (or clients and data in [server])"
        )
    distill_data = dict(file["distill"])
    flags = {
        "student": args.student,
        "kd": args.kd,
        "temperature": args.temperature,
        "init": args.init,
        "class_targets": args.class_targets,
        "combine": args.combine,
        "fusion_weight": args.fusion_weight,
        "pixel_weight": args.pixel_weight,
    }
    distill_data.update({k: v for k, v in flags.items() if v is not None})
    if args.no_fusion:
        distill_data["feature_fusion"] = False
    if args.fusion:
        distill_data["feature_fusion"] = True
    if args.no_align:
        distill_data["fusion_align"] = False
    if args.inconsistency_weighted:
        distill_data["inconsistency_weighting"] = True
    dcfg = from_dict(DistillConfig, distill_data, source=str(args.config or "arguments"))
    tcfg = _train_config(args, file["train"])
    report = None
    if args.inconsistency:
        source = Path(args.inconsistency)
        source = source / "inconsistency.json" if source.is_dir() else source
        try:
            report = json.loads(source.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise Feds2rError(f"cannot read the inconsistency report {source}: {exc}") from None
    generated = args.generated
    if generated and ":" not in generated:  # a folder written by `feds2r server augment`
        gen_dir = Path(generated)
        generated = f"folder:{gen_dir / 'images' if (gen_dir / 'images').is_dir() else gen_dir}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "clients": [str(c) for c in args.clients],
        "data": args.data,
        "generated": generated or "",
        "inconsistency": str(args.inconsistency or ""),
    }
    resolved = to_toml({"server": settings, "distill": dcfg, "train": tcfg}).encode()
    # a resume is checked against the stopped run first: a refused one leaves config.toml alone
    resuming = (out / "state" / "state.json").is_file()
    if not resuming:
        write_atomic(out / "config.toml", resolved)
    summary = run_distill(
        args.clients,
        args.data,
        out,
        dcfg,
        tcfg,
        generated=generated,
        inconsistency=report,
        on_error="skip" if args.skip_bad else "raise",
        progress=not args.quiet,
    )
    if resuming:
        write_atomic(out / "config.toml", resolved)
    print(
        f"distilled {len(args.clients)} clients into a {dcfg.student} in "
        f"{summary['seconds']:.0f} s; global model: {out}"
    )
    return 0


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from feds2r.demo import results_table, run_demo

    results = run_demo(
        args.profile,
        args.out,
        seed=args.seed,
        world=args.world,
        progress=not args.quiet,
        pretrained=not args.no_pretrained,
    )
    print()
    print(results_table(results))
    print(f"\nunstable classes: {', '.join(results['unstable_classes'])}")
    print(
        f"total time {results['timing_s']['total']:.0f} s; report: {Path(args.out) / 'report.md'}"
    )
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from feds2r.pretrain import PretrainConfig, pretrain

    base = PretrainConfig(preset=args.preset)
    flags = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    flags |= {"warmup_steps": args.warmup_steps, "device": args.device}
    flags = {k: v for k, v in flags.items() if v is not None}
    try:
        recipe = dataclasses.replace(base.train, **flags)
        config = dataclasses.replace(base, images=args.images or base.images, train=recipe)
    except ValueError as exc:
        raise Feds2rError(str(exc)) from None
    summary = pretrain(config, args.out, world=args.world, progress=not args.quiet)
    print(
        f"pretrained the {config.preset} backbone for {summary['steps']} steps in "
        f"{summary['seconds']:.0f} s; weights: {summary['weights']}"
    )
    return 0


# ----------------------------------------------------------------------------- federate


def _client_arg(text: str) -> tuple[str, str]:
    """``[NAME=]SPEC`` -> (name, spec); the name defaults to the spec's format."""
    name, sep, spec = text.partition("=")
    if sep and ":" not in name:
        return name, spec
    return text.split(":", 1)[0], text


def _federation_config(args: argparse.Namespace, num_clients: int):
    from feds2r.federation.protocol import FederationConfig

    values = {
        "out": str(Path(args.out).resolve()),
        "server_data": args.server_data,
        "num_clients": num_clients,
        "evaluate": ";".join(args.evaluate or []),
        "pretrained": not getattr(args, "no_pretrained", False),
    }
    for name in (
        "preset",
        "client_steps",
        "distill_steps",
        "batch_size",
        "height",
        "crop",
        "lr",
        "warmup_steps",
        "seed",
        "generated_images",
        "min_clients",
        "connect_timeout",
        "client_timeout",
    ):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return FederationConfig(**values)


def cmd_federate_local(args: argparse.Namespace) -> int:
    try:
        from feds2r.federation.local import CLIENT_APP, federate_local
    except ImportError as exc:
        raise Feds2rError(
            f"Flower is not installed ({exc}); install it with: pip install 'feds2r[flower]'"
        ) from None

    clients = [_client_arg(c) for c in args.client]
    names = [n for n, _ in clients]
    if len(set(names)) != len(names):
        raise Feds2rError(f"client names must differ, got {names}; name them NAME=SPEC")
    config = _federation_config(args, len(clients))
    results = federate_local(
        clients,
        config,
        tls=args.tls,
        auth=args.auth,
        client_app=args.client_app or CLIENT_APP,
        run_timeout=args.timeout,
        log=(lambda _text: None) if args.quiet else print,
    )
    for name, entry in results["clients"].items():
        status = entry["status"] + (f" ({entry['reason']})" if entry.get("reason") else "")
        print(f"client {name}: {status}")
    if results.get("miou"):
        for name, value in results["miou"].items():
            print(f"global model mIoU on {name}: {value:.2f}")
    print(f"global model: {results['global_model']}; results: {Path(config.out) / 'results.json'}")
    return 0


def cmd_federate_certs(args: argparse.Namespace) -> int:
    from feds2r.federation.tls import write_credentials

    hosts = tuple(args.host or ("localhost", "127.0.0.1"))
    paths, pairs = write_credentials(args.out, hosts, args.node_keys, force=args.force)
    print(f"CA certificate: {paths['ca_cert']} (give it to every SuperNode and to flwr)")
    print(f"SuperLink certificate and key: {paths['cert']}, {paths['key']}")
    for private, public in pairs:
        print(f"SuperNode key: {private} (register {public} with `flwr supernode register`)")
    return 0


def cmd_federate_app(args: argparse.Namespace) -> int:
    from feds2r.federation.local import app_pyproject
    from feds2r.io import write_atomic

    config = _federation_config(args, args.num_clients)
    dest = Path(args.app) / "pyproject.toml"
    if dest.exists() and not args.force:
        raise Feds2rError(f"{dest} exists; use --force to replace it")
    write_atomic(dest, app_pyproject(config).encode())
    print(f"wrote the Flower app {args.app}; run it with: flwr run {args.app} CONNECTION --stream")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="feds2r",
        formatter_class=fmt,
        description="One-shot federated domain generalization for synthetic-to-real "
        "semantic segmentation (FedS2R) and its baselines.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r data synth --all --out data/world      # build the built-in benchmark
              feds2r data formats                           # dataset formats and layouts
              feds2r data check cityscapes:data/world/cityscapes-like?split=val
              feds2r client train --data gta5:data/world/gta5-like?split=train --out runs/gta5
              feds2r eval --model runs/gta5 --data cityscapes:data/world/cityscapes-like?split=val
            """),
    )
    from feds2r import __version__

    parser.add_argument("--version", action="version", version=f"feds2r {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser(
        "data",
        help="datasets: formats, checks, the built-in world",
        description="Work with datasets.",
        formatter_class=fmt,
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = data_sub.add_parser(
        "formats",
        help="list the dataset formats and their on-disk layouts",
        formatter_class=fmt,
        description="List every dataset format feds2r reads, with its expected layout.",
        epilog="examples:\n  feds2r data formats\n  feds2r data formats --json",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_data_formats)

    p = data_sub.add_parser(
        "check",
        help="validate a dataset tree and report what is wrong",
        formatter_class=fmt,
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
    p.add_argument("--no-labels", action="store_true", help="check images only")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON ('-': stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_check)

    p = data_sub.add_parser(
        "synth",
        help="write the built-in procedural world in the real datasets' formats",
        formatter_class=fmt,
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
    p.add_argument("--all", action="store_true", help="write every domain with default splits")
    p.add_argument("--domain", help="write one domain (see --list)")
    p.add_argument("--split", default="train", help="split for --domain (default: train)")
    p.add_argument(
        "--num", type=_count(1), help="images for --domain (default: the domain's size)"
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
    p.add_argument("--size", type=_size, default=(256, 512), help="HxW (default 256x512)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--scale", type=float, default=1.0, help="for --all: multiply split sizes")
    p.add_argument("--list", action="store_true", help="list the domains and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data_synth)

    p = sub.add_parser(
        "demo",
        help="run the whole one-shot federation on the built-in world, with baselines",
        formatter_class=fmt,
        description="Build the built-in world if missing, train one client per synthetic "
        "domain from one common initial model, run the FedS2R server (inconsistency, generated "
        "images, distillation with feature fusion) and the baselines, and evaluate everything "
        "on the five real-like test domains. Writes OUT/results.json, OUT/report.md (table, "
        "per-class IoU, inconsistency chart, sample predictions), every checkpoint and "
        "OUT/config.toml. Profiles: quick (a smoke test, about 2 minutes), default (about 15 "
        "minutes on 2 CPU cores), full (larger world and budgets).",
        epilog=textwrap.dedent("""\
            examples:
              feds2r demo --out runs/demo
              feds2r demo --profile quick --out /tmp/demo-quick
              feds2r demo --profile default --seed 1 --out runs/demo-s1 --world runs/demo/world
            """),
    )
    p.add_argument("--profile", default="default", choices=("quick", "default", "full"))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of every method (the world: 0)")
    p.add_argument("--world", type=Path, help="reuse a demo world folder (default OUT/world)")
    p.add_argument(
        "--no-pretrained",
        action="store_true",
        help="start every model from random weights instead of the shipped public backbone",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "pretrain",
        help="pretrain a preset's backbone on the built-in world's public domain",
        formatter_class=fmt,
        description="Pretrain the backbone of a preset on the `public` domain of the built-in "
        "world (a randomised style per image; docs/world.md) from image-level labels only "
        "(which classes an image shows: multi-label classification), the offline stand-in for "
        "ImageNet weights. Writes OUT/backbone.safetensors (what --backbone-weights loads), "
        "OUT/pretrain.json, OUT/config.toml, OUT/train_log.jsonl and OUT/loss_curve.png; the "
        "public images go to OUT/public unless --world names a folder. Run the same command "
        "again to resume. The weights feds2r ships were made with the defaults (docs/models.md).",
        epilog=textwrap.dedent("""\
            examples:
              feds2r pretrain --preset m2f-cpu --out runs/pretrain-m2f-cpu
              feds2r pretrain --preset segformer-cpu --steps 500 --warmup-steps 50 --out /tmp/pt \\
                  --world /tmp/public
            """),
    )
    p.add_argument("--preset", default="m2f-cpu", help="model preset (default m2f-cpu)")
    p.add_argument("--out", required=True, help="output folder (resumed if it holds a run)")
    p.add_argument("--world", help="folder of the public images (default OUT/public)")
    p.add_argument("--images", type=int, help="public images to write and train on (4000)")
    p.add_argument("--steps", type=int, help="optimizer steps (2500)")
    p.add_argument("--warmup-steps", type=int, help="warm-up steps (100)")
    p.add_argument("--batch-size", type=int, help="batch size (16)")
    p.add_argument("--lr", type=float, help="learning rate (0.001)")
    p.add_argument("--seed", type=int, help="seed of the training run (0)")
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "models",
        help="list the model presets",
        formatter_class=fmt,
        description="List every model preset: Mask2Former (mask classification) and SegFormer "
        "(per-pixel), CPU-sized and paper-scale. All are built from configs; nothing is "
        "downloaded.",
        epilog="examples:\n  feds2r models",
    )
    p.set_defaults(func=cmd_models)

    client = sub.add_parser(
        "client",
        help="client side: train on a private dataset",
        description="Client-side commands.",
        formatter_class=fmt,
    )
    client_sub = client.add_subparsers(dest="client_command", metavar="SUBCOMMAND")
    p = client_sub.add_parser(
        "train",
        help="train a segmentation model on a labelled dataset",
        formatter_class=fmt,
        description="Supervised training of one client model. Writes OUT/model.safetensors + "
        "OUT/model.json (the checkpoint), OUT/config.toml (the resolved config), "
        "OUT/train_log.jsonl and OUT/loss_curve.png. Run the same command again to resume a "
        "stopped run; an OUT holding another run (other data, preset or config) is refused "
        "and left as it is. Settings come from --config (a TOML file with [client] and [train] "
        "tables, such as a run's own config.toml; the preset may also be given at the top "
        "level) and are overridden by the flags.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r client train --data gta5:data/world/gta5-like?split=train --out runs/gta5
              feds2r client train --data synthia:/data/synthia --preset segformer-cpu --steps 300 \\
                  --out runs/synthia
              feds2r client train --data gta5:/data/gta5 --preset m2f-swin-t --height 512 \\
                  --crop 512x1024 --backbone-weights swin_tiny.safetensors --out runs/gta5-swin
              feds2r client train --data gta5:/data/gta5 --preset m2f-swin-t --height 512 \\
                  --crop 512x1024 --init hf/mask2former-swin-tiny-cityscapes --out runs/gta5-hf
              feds2r client train --data gta5:/data/gta5 --no-pretrained --backbone-lr-mult 1 \\
                  --out runs/gta5-random
              feds2r client train --data gta5:/data/gta5 --config recipe.toml --out runs/gta5
            """),
    )
    p.add_argument("--data", help="labelled dataset spec FORMAT:PATH (or data in [client])")
    p.add_argument("--out", required=True, help="output folder (resumed if it holds a run)")
    p.add_argument("--preset", help="model preset (default m2f-cpu; see `feds2r models`)")
    p.add_argument(
        "--config", help="TOML file with [client] and [train] tables (e.g. a run's config.toml)"
    )
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--height", type=int, help="resize images to this height (aspect kept)")
    p.add_argument("--crop", type=_size, help="training crop HxW")
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument(
        "--backbone-weights",
        help="where the backbone starts: 'public' (default: the pretrained backbone feds2r "
        "ships for the CPU presets), a .safetensors file or a Hugging Face model directory",
    )
    p.add_argument(
        "--no-pretrained", action="store_true", help="start from random weights instead"
    )
    p.add_argument(
        "--backbone-lr-mult",
        type=float,
        help="backbone learning rate = lr x this (default 0.1, for a pretrained backbone)",
    )
    p.add_argument(
        "--init",
        help="model to start from instead: a feds2r checkpoint (the server's initial model) or "
        "a Hugging Face model directory of the preset's architecture with 19 classes",
    )
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable samples out")
    p.add_argument(
        "--threads",
        type=_count(0),
        help="CPU threads (default 0: PyTorch's default; model.json records the count used, "
        "give it to rerun bit for bit)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_client_train)

    def add_inference_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="checkpoint folder or .safetensors file")
        p.add_argument(
            "--height", type=_count(16), default=128, help="inference height (>= 16; default 128)"
        )
        p.add_argument("--sliding", action="store_true", help="sliding-window inference")
        p.add_argument("--crop", type=_size, default=(128, 256), help="sliding window HxW")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        p.add_argument("--skip-bad", action="store_true", help="skip unreadable samples")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "eval",
        help="mIoU of a checkpoint on labelled datasets",
        formatter_class=fmt,
        description="Evaluate a checkpoint: mIoU (confusion matrix over the whole set, mean over "
        "the classes present in its ground truth), pixel accuracy and per-class IoU, in percent. "
        "Prints a table, one row per dataset; --json writes the schema in docs/evaluation.md.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r eval --model runs/gta5 --data cityscapes:data/world/cityscapes-like?split=val
              feds2r eval --model runs/gta5 --data bdd:/data/bdd?split=val \\
                  --data acdc:/data/acdc?split=val --per-class --json eval.json
              feds2r eval --model runs/gta5-swin --data cityscapes:/data/cs?split=val \\
                  --height 512 --sliding --crop 512x1024
            """),
    )
    add_inference_args(p)
    p.add_argument("--data", required=True, action="append", help="labelled spec (repeatable)")
    p.add_argument("--batch-size", type=_count(1), default=8, help="images per batch (default 8)")
    p.add_argument("--per-class", action="store_true", help="print per-class IoU columns")
    p.add_argument("--json", metavar="PATH", help="write results as JSON ('-': stdout)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "predict",
        help="write predicted label maps and colour overlays",
        formatter_class=fmt,
        description="Predict every image of a dataset: OUT/NAME.png holds train ids (0-18), "
        "OUT/overlay/NAME.png the prediction in Cityscapes colours over the image, and "
        "OUT/predictions.json (written last) the count and the names.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r predict --model runs/gta5 \\
                  --data cityscapes:data/world/cityscapes-like?split=val \\
                  --out preds/cs
              feds2r predict --model runs/gta5 --data folder:my_images --out preds/mine --limit 20
            """),
    )
    add_inference_args(p)
    p.add_argument("--data", required=True, help="dataset spec (labels not needed)")
    p.add_argument(
        "--out",
        required=True,
        help="output folder: new, empty, or an earlier predict output (replaced)",
    )
    p.add_argument("--limit", type=_count(1), help="predict at most this many images")
    p.set_defaults(func=cmd_predict)

    server = sub.add_parser(
        "server",
        help="server side: inconsistency, augmentation",
        description="Server-side commands of FedS2R.",
        formatter_class=fmt,
    )
    server_sub = server.add_subparsers(dest="server_command", metavar="SUBCOMMAND")
    p = server_sub.add_parser(
        "inconsistency",
        help="score per class how much the client models disagree",
        formatter_class=fmt,
        description="Run every client model on the server's unlabelled images and score, per "
        "class, 1 - mean pairwise IoU of their predicted masks (accumulated over the set). "
        "Classes scoring at least mean + STD_FACTOR x std are unstable (between MIN and MAX of "
        "them). Writes OUT/inconsistency.json and OUT/inconsistency.png (a bar chart).",
        epilog=textwrap.dedent("""\
            examples:
              feds2r server inconsistency --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train --out runs/server
            """),
    )
    p.add_argument("--clients", nargs="+", required=True, help="client checkpoints (2 or more)")
    p.add_argument("--data", required=True, help="the server's images (labels are not used)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--height", type=_count(16), default=128, help="inference height (>= 16; default 128)"
    )
    p.add_argument("--std-factor", type=float, default=0.5)
    p.add_argument("--min-unstable", type=int, default=3)
    p.add_argument("--max-unstable", type=int, default=6)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_server_inconsistency)

    p = server_sub.add_parser(
        "augment",
        help="generate images of the unstable classes",
        formatter_class=fmt,
        description="Write prompts about the unstable classes (more for more inconsistent "
        "ones) and generate one image per prompt. Writes OUT/images/*.png (an unlabelled "
        "dataset: folder:OUT/images), OUT/prompts.jsonl and OUT/generated.json.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r server augment --inconsistency runs/server --num 200 --out runs/generated
              feds2r server augment --inconsistency runs/server --num 200 --out runs/gen-sd \\
                  --generator diffusers --model-dir /models/sd-turbo --steps 2 --guidance 0
              feds2r server augment --inconsistency runs/server --num 50 --out runs/gen-llm \\
                  --prompts llm --llm-url http://127.0.0.1:8000/v1 --llm-model llama-3-8b
            """),
    )
    p.add_argument(
        "--inconsistency", required=True, help="inconsistency.json, or the folder holding it"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder: new, empty, or an earlier augment output (replaced)",
    )
    p.add_argument(
        "--num", type=_count(1), default=200, help="number of images, exactly (default 200)"
    )
    p.add_argument("--prompts", choices=("builtin", "llm"), default="builtin")
    p.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--llm-model", help="model name for the chat endpoint")
    p.add_argument("--llm-key-env", help="environment variable holding an API key")
    p.add_argument("--generator", choices=("builtin", "diffusers"), default="builtin")
    p.add_argument("--model-dir", help="local diffusers pipeline folder (--generator diffusers)")
    p.add_argument("--steps", type=int, default=25, help="diffusion steps (diffusers)")
    p.add_argument("--guidance", type=float, default=5.0, help="guidance scale (diffusers)")
    p.add_argument("--size", type=_size, default=(256, 512), help="image HxW (default 256x512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_server_augment)

    p = server_sub.add_parser(
        "distill",
        help="distil the client models into the global model",
        formatter_class=fmt,
        description="Multi-client knowledge distillation (FedS2R). The client models are "
        "frozen teachers; on every server image (real, plus generated with --generated) their "
        "predictions are combined (with --fusion: from their averaged decoder features, each "
        "decoded by the teacher's own head, as FedS2R publishes it; off by default, chosen on "
        "the dev split: docs/method.md), and the global model learns the combined soft "
        "targets (KL on classes, BCE + Dice on masks). Switches for the ablations: --fusion, "
        "--kd pixel --combine mean (FedDF-style per-pixel KD of the plain mean), "
        "--inconsistency-weighted. Settings: a TOML with "
        "[server], [distill] and [train] tables (--config; its own config.toml is one), "
        "overridden by flags. Writes the checkpoint, "
        "config.toml, train_log.jsonl and loss_curve.png to OUT. See docs/method.md.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r server distill --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train \\
                  --generated runs/generated --out runs/global
              feds2r server distill --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train --fusion \\
                  --generated runs/generated --out runs/global-fused
              feds2r server distill --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train --kd pixel \\
                  --combine mean --out runs/feddf
            """),
    )
    p.add_argument("--clients", nargs="+", help="client checkpoints (or clients in [server])")
    p.add_argument("--data", help="the server's real images (labels unused; or data in [server])")
    p.add_argument("--generated", help="generated images: a spec or a `server augment` folder")
    p.add_argument("--out", required=True, help="output folder (resumed if it holds a run)")
    p.add_argument("--inconsistency", help="inconsistency report (for --inconsistency-weighted)")
    p.add_argument("--student", help="preset of the global model (default m2f-cpu)")
    p.add_argument(
        "--init",
        choices=("auto", "fedavg", "client", "scratch"),
        help="student initialisation (default auto: FedAvg, or the client closest to the "
        "teachers' ensemble when FedAvg agrees less with it)",
    )
    p.add_argument("--kd", choices=("mask", "pixel"), help="distillation objective")
    p.add_argument(
        "--class-targets",
        choices=("onehot", "soft"),
        help="class label of each mask target (default onehot)",
    )
    p.add_argument(
        "--combine",
        choices=("mean", "majority"),
        help="teachers' target: majority (default; their mean where most agree, elsewhere the "
        "prediction of the teacher that agrees most with the others) or mean (everywhere)",
    )
    p.add_argument("--pixel-weight", type=float, help="add per-pixel KL to mask KD (weight)")
    fusion = p.add_mutually_exclusive_group()
    fusion.add_argument(
        "--fusion",
        action="store_true",
        help="feature fusion, as FedS2R publishes it (off by default: chosen on dev, "
        "docs/method.md)",
    )
    fusion.add_argument("--no-fusion", action="store_true", help="no feature fusion (default)")
    p.add_argument(
        "--no-align",
        action="store_true",
        help="fuse raw features (no least-squares alignment between the teachers' spaces)",
    )
    p.add_argument("--fusion-weight", type=float, help="share of fused features (default 1)")
    p.add_argument(
        "--inconsistency-weighted",
        action="store_true",
        help="weight teachers per class by their agreement",
    )
    p.add_argument("--temperature", type=float)
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out")
    p.add_argument(
        "--config", help="TOML with [server], [distill] and [train] tables (e.g. its config.toml)"
    )
    for flag, kind in (
        ("--steps", int),
        ("--batch-size", int),
        ("--lr", float),
        ("--warmup-steps", int),
        ("--seed", int),
        ("--height", int),
    ):
        p.add_argument(flag, type=kind)
    p.add_argument("--crop", type=_size)
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_server_distill)

    fed = sub.add_parser(
        "federate",
        help="run the one-shot federation on Flower",
        description="Run the one-shot federation on Flower (docs/federation.md).",
    )
    fed_sub = fed.add_subparsers(dest="federate_command", metavar="COMMAND")

    def add_federation_args(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--server-data", required=True, help="the server's unlabelled real images (a spec)"
        )
        q.add_argument(
            "--evaluate",
            action="append",
            metavar="NAME=SPEC",
            help="a labelled test set for the global model (repeatable)",
        )
        q.add_argument("--preset", help="model preset (default m2f-cpu)")
        for flag, kind, text in (
            ("--client-steps", int, "client training steps (default 300)"),
            ("--distill-steps", int, "distillation steps (default 300)"),
            ("--batch-size", int, "batch size (default 8)"),
            ("--height", int, "training image height (default 128)"),
            ("--lr", float, "learning rate (default 6e-4)"),
            ("--warmup-steps", int, "warm-up steps (default 50)"),
            ("--seed", int, "seed of the initial model and of training (default 0)"),
            ("--generated-images", int, "images generated for unstable classes (default 150)"),
            ("--min-clients", int, "fewest valid client models to go on with (default 2)"),
            ("--connect-timeout", float, "seconds to wait for SuperNodes (default 120)"),
            ("--client-timeout", float, "seconds to wait for replies (default 3600)"),
        ):
            q.add_argument(flag, type=kind, help=text)
        q.add_argument("--crop", type=_size, help="training crop HxW (default 128x256)")
        q.add_argument(
            "--no-pretrained",
            action="store_true",
            help="start the common initial model from random weights instead of the shipped "
            "public backbone",
        )

    p = fed_sub.add_parser(
        "local",
        help="SuperLink + one SuperNode per client on 127.0.0.1, run, check, stop",
        formatter_class=fmt,
        description="Start a Flower SuperLink and one SuperNode per client on 127.0.0.1 "
        "(separate processes), run the feds2r app (one exchange, then inconsistency, "
        "augmentation and distillation on the server), wait for the run's final status, stop "
        "every process it started, and exit non-zero with the reason if the run failed. OUT "
        "(new or empty) receives results.json, the global model (global/), the client models "
        "(clients/) and the logs; a failed run leaves it untouched. Ctrl-C, SIGTERM and SIGHUP "
        "stop every process and write nothing (exit 128 + signal). Each SuperNode trains with "
        "max(1, cores // clients) threads unless OMP_NUM_THREADS is set.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r federate local \\
                  --client gta5=gta5:data/world/gta5-like?split=train \\
                  --client synthia=synthia:data/world/synthia-like?split=train \\
                  --client synscapes=synscapes:data/world/synscapes-like?split=train \\
                  --server-data cityscapes:data/world/cityscapes-like?split=train \\
                  --evaluate cs=cityscapes:data/world/cityscapes-like?split=val \\
                  --out runs/federation
              feds2r federate local --tls --auth ...   # TLS and SuperNode authentication
            """),
    )
    p.add_argument(
        "--client",
        action="append",
        required=True,
        metavar="[NAME=]SPEC",
        help="one client's private labelled dataset (repeat per client)",
    )
    add_federation_args(p)
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--tls", action="store_true", help="TLS with a throw-away local CA")
    p.add_argument("--auth", action="store_true", help="SuperNode authentication (node keys)")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds for the whole run")
    p.add_argument(
        "--client-app",
        help="ClientApp object reference (default feds2r.federation.client_app:app)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_federate_local)

    p = fed_sub.add_parser(
        "certs",
        help="a local CA, a SuperLink certificate and SuperNode keys for trying TLS and auth",
        formatter_class=fmt,
        description="Write ca.crt/ca.key, server.crt/server.key (for the given hosts) and N "
        "SuperNode key pairs (node-K, node-K.pub) into OUT. For trying a deployment; use your "
        "organisation's CA in production. An OUT that already holds any of these files is "
        "refused unless --force, which replaces the whole set.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r federate certs --out certs --node-keys 3
              feds2r federate certs --out certs --host superlink.example.org --host 10.0.0.5
            """),
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--host",
        action="append",
        default=None,
        help="host name or IP the SuperLink is reached at (default localhost, 127.0.0.1)",
    )
    p.add_argument("--node-keys", type=int, default=0, help="SuperNode key pairs to write")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace certificates and keys already in OUT: the whole set, old node keys included",
    )
    p.set_defaults(func=cmd_federate_certs)

    p = fed_sub.add_parser(
        "app",
        help="write a Flower app folder (pyproject.toml) for `flwr run` on a deployment",
        formatter_class=fmt,
        description="Write APP/pyproject.toml: a Flower app that runs the installed feds2r "
        "with these settings baked into its run config. Submit it with `flwr run APP "
        "CONNECTION` to a SuperLink (docs/federation.md).",
        epilog=textwrap.dedent("""\
            examples:
              feds2r federate app --app fedapp --num-clients 3 \\
                  --server-data cityscapes:/srv/cityscapes?split=train --out /srv/federation
            """),
    )
    p.add_argument("--app", required=True, help="folder to write the app into")
    add_federation_args(p)
    p.add_argument("--out", required=True, help="output folder on the SuperLink's machine")
    p.add_argument(
        "--num-clients", type=int, default=0, help="clients to wait for (0: min-clients)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing pyproject.toml")
    p.set_defaults(func=cmd_federate_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # a group without a subcommand: show its help
        if args.command in ("data", "client", "server", "federate"):
            parser.parse_args([args.command, "--help"])
        parser.print_help()
        return 2
    from feds2r.signals import Terminated, cancel_on_signals

    try:
        _check_outputs(args)
        with cancel_on_signals():  # SIGTERM/SIGHUP cancel as Ctrl-C does (feds2r/signals.py)
            return func(args)
    except Feds2rError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path given that cannot be read or written (feds2r/io.py checks most)
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
