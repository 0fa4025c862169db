"""The `isa4d` command.

Hydra-driven commands take Hydra overrides after the command name, exactly as a `@hydra.main` script
would (`-m` for sweeps, `--cfg job` to print the composed config, `--help`):

    isa4d train-vae trainer=gpu data.batch_size=8
    isa4d train-dit -m experiment=dit_ablate_cpu model.vae_ckpt=VAE.ckpt seed=1,2,3 +variant=isa,isa_no_pe

Plain commands use ordinary flags: `isa4d body convert SMPL.pkl SMPL_NEUTRAL.npz`,
`isa4d ablate-report logs/ablate/<time>`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

from isa4d import __version__
from isa4d.config import config_dir

# command -> (root config, "module:function" of the Hydra task, help)
HYDRA_COMMANDS: dict[str, tuple[str, str, str]] = {
    "train-vae": ("train_vae", "isa4d.train:main", "train the stage-1 causal video VAE"),
    "train-dit": ("train_dit", "isa4d.train:main", "train the stage-2 ISA-DiT"),
    "generate": (
        "generate",
        "isa4d.generate:main",
        "generate a video from a reference image, motion and camera",
    ),
    "prepare": ("prepare", "isa4d.data.prepare:main", "write WebDataset shards from a folder of clips"),
    "synth": (
        "synth",
        "isa4d.data.synth:main",
        "render the synthetic 4D-human shards (train/video/camera/mask)",
    ),
    "footage": ("footage", "isa4d.data.footage:main", "write the real-footage shards (VAE stage)"),
    "encode": ("encode", "isa4d.encode:main", "write VAE-latent shards (with all conditioning) for the DiT"),
    "evaluate": (
        "evaluate",
        "isa4d.evaluate:main",
        "PSNR/SSIM/LPIPS/FVD of a VAE or DiT checkpoint on the held-out splits",
    ),
}


def _load(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    return getattr(import_module(module), name)


def run_hydra(command: str, overrides: list[str]) -> None:
    """Run a Hydra task with `overrides` as its command line."""
    import hydra

    config_name, task, _ = HYDRA_COMMANDS[command]
    sys.argv = [f"isa4d {command}", *overrides]
    hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(_load(task))()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isa4d", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"isa4d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (config_name, _, help_text) in HYDRA_COMMANDS.items():
        sub.add_parser(name, help=f"{help_text} (Hydra: conf/{config_name}.yaml)", add_help=False)
    _load("isa4d.body.cli:add_cli")(sub)
    _load("isa4d.ablate:add_cli")(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in HYDRA_COMMANDS:
        run_hydra(argv[0], argv[1:])
        return
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
