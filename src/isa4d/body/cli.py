"""`isa4d body ...` commands: convert an SMPL pickle, write the procedural stand-in body."""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from isa4d.body.convert import convert_smpl_pickle
from isa4d.body.procedural import write_procedural_npz
from isa4d.body.storage import load_body_npz


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `body convert SRC DST [--sha256 HEX]` and `body procedural DST` on `subparsers`.

    Each command sets `func`, to be called with the parsed arguments.
    """
    body = subparsers.add_parser("body", help="body model files: convert SMPL, write the procedural body")
    commands = body.add_subparsers(dest="body_command", required=True, metavar="BODY_COMMAND")
    convert = commands.add_parser(
        "convert", help="convert a licensed SMPL .pkl to the .npz that isa4d loads (no chumpy needed)"
    )
    convert.add_argument(
        "src", type=Path, help="SMPL pickle, e.g. basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
    )
    convert.add_argument("dst", type=Path, help="output .npz, e.g. SMPL_NEUTRAL.npz")
    convert.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of SRC, checked before reading it")
    convert.set_defaults(func=_convert)
    procedural = commands.add_parser(
        "procedural", help="write the procedural stand-in body (SMPL format, not SMPL) to an .npz"
    )
    procedural.add_argument("dst", type=Path, help="output .npz")
    procedural.set_defaults(func=_procedural)


def _describe(path: Path) -> str:
    arrays = load_body_npz(path)
    return (
        f"wrote {path}: {arrays['v_template'].shape[0]} vertices, {arrays['f'].shape[0]} faces, "
        f"{arrays['J_regressor'].shape[0]} joints, {arrays['shapedirs'].shape[-1]} shape components"
    )


def _convert(args: argparse.Namespace) -> None:
    try:
        destination = convert_smpl_pickle(args.src, args.dst, args.sha256)
    except (OSError, KeyError, ValueError, pickle.UnpicklingError) as error:
        sys.exit(f"isa4d body convert: {error}")
    print(_describe(destination))


def _procedural(args: argparse.Namespace) -> None:
    print(_describe(write_procedural_npz(args.dst)))
