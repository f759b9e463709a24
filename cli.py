"""The command line shared by the scripts: comma-list flags, presets, one-line user errors, local paths.

    from cli import Domains, Names, UserError, parse, run
    cfg = parse(sys.argv[1:], Config, PRESETS)    # --preset NAME picks the defaults, the other flags override
    run(main, cfg, "train.py")                    # a UserError prints as one line, exit status 2

It imports only tyro and the standard library, so each script parses its flags (and answers --help) before
torch and transformers load.
"""

import errno
import os
import sys
from pathlib import Path
from typing import Annotated

import tyro


class UserError(Exception):
    """A mistake in the request (a path, a name, a value), not a bug: `run` prints it as one line. Not a
    ValueError, which tyro would catch in a config's __post_init__ and print as a box."""


def _split(args: list[str]) -> list[str]:
    # tyro would parse `--domains math,code` as the single string "math,code"; commas and spaces alike here.
    return [s for a in args for s in a.split(",") if s]


Domains = Annotated[tuple[str, ...], tyro.constructors.PrimitiveConstructorSpec(
    nargs="*", metavar="DOMAIN[,DOMAIN...]", instance_from_str=lambda a: tuple(_split(a)),
    is_instance=lambda x: isinstance(x, tuple), str_from_instance=lambda x: [",".join(x)])]
Names = Annotated[list[str], tyro.constructors.PrimitiveConstructorSpec(
    nargs="*", metavar="A[,B...]", instance_from_str=_split, is_instance=lambda x: isinstance(x, list),
    str_from_instance=lambda x: [",".join(x)])]


def parse(argv: list[str], config, presets: dict, default: str = "tiny", defaults=None):
    """`--preset NAME` picks the defaults from `presets`; the remaining flags override them. `defaults`, when
    given, replaces the preset (train.py --resume: the run's own settings)."""
    preset = default
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            preset, argv = argv[i + 1], argv[:i] + argv[i + 2:]
            break
        if a.startswith("--preset="):
            preset, argv = a.split("=", 1)[1], argv[:i] + argv[i + 1:]
            break
    script = os.path.basename(sys.argv[0])
    if preset not in presets:
        raise SystemExit(f"{script}: error: unknown preset {preset!r}; valid: {', '.join(presets)}")
    try:   # a config's __post_init__ raises UserError for a bad value: one line, like every other user error
        return tyro.cli(config, default=defaults or presets[preset], args=argv,
                        console_outputs=int(os.environ.get("RANK", 0)) == 0)
    except UserError as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"{script}: error: {e}", file=sys.stderr)
        sys.exit(2)


# A full, over-quota, read-only or failing disk: the machine's state, not a bug, so one line like a UserError.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


def run(main, cfg, script: str):
    """main(cfg), with a UserError or a disk error (DISK_ERRNOS) printed as "script: error: ..." and exit status 2
    (tracebacks are for bugs; M2RL_DEBUG=1 shows them for these too)."""
    try:
        return main(cfg)
    except (UserError, OSError) as e:
        if os.environ.get("M2RL_DEBUG", "") not in ("", "0") or (isinstance(e, OSError) and e.errno not in DISK_ERRNOS):
            raise
        if int(os.environ.get("RANK", 0)) == 0:
            msg = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else e
            print(f"{script}: error: {msg}", file=sys.stderr)
        sys.exit(2)


def looks_local(spec: str) -> bool:
    """A model or data spec meant as a path on this machine: it starts with '.', '/' or '~', names an existing
    path, or its first folder exists here (out/math when ./out exists). Such a spec is never sent to the Hub."""
    parts = Path(spec).parts
    return spec.startswith((".", "/", "~")) or os.path.exists(spec) or (len(parts) > 1 and os.path.isdir(parts[0]))
