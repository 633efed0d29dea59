"""``python -m feds2r``: the ``feds2r`` command line, also as one of torchrun's processes.

``torchrun --nproc_per_node N -m feds2r COMMAND ...`` starts N of these. Each joins the run's
process group and runs the command (:func:`feds2r.engine.distributed.launch`); rank 0 writes the
outputs and shows progress. The others run it with ``--quiet`` (no progress bars) and, for a
command that writes ``--json FILE``, ``--json -`` (rank 0 writes the file); their stdout goes
nowhere. docs/multi-gpu.md has the whole story.
"""

from __future__ import annotations

import contextlib
import io
import sys

from feds2r.cli import build_parser, main
from feds2r.engine.distributed import launch, launched


def follower_argv(argv: list[str]) -> list[str] | int:
    """The command line a torchrun process other than rank 0 runs for ``argv``: ``--quiet`` and
    ``--json -`` added where the command has them. For an ``argv`` that does not parse or asks
    for help, the exit code it ends with (rank 0 prints the message or the help)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = build_parser(argv).parse_args(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 2
    extra = []
    if getattr(args, "progress", False):
        extra.append("--quiet")
    if getattr(args, "json_path", None) not in (None, "-"):
        extra += ["--json", "-"]  # the last --json wins
    return [*argv, *extra]


def run(argv: list[str] | None = None) -> int:
    """``feds2r ARGV``, in this process or as one of torchrun's."""
    argv = sys.argv[1:] if argv is None else list(argv)
    info = launched()
    if info is not None and info.world_size > 1:
        # every process parses first, rank 0 too: they then import the same modules before
        # joining, and meet an error every process meets at about the same time (rank 0 alone
        # reports it when the others see it fail within distributed.PEER_GRACE_S)
        mine = follower_argv(argv)
        if info.rank != 0:
            if isinstance(mine, int):  # join the others all the same: rank 0 waits for everyone
                return launch(lambda: mine)
            argv = mine
    return launch(lambda: main(argv))


if __name__ == "__main__":
    sys.exit(run())
