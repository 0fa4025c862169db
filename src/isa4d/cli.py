"""The `isa4d` command.

Hydra-driven commands take Hydra overrides after the command name, exactly as a `@hydra.main` script
would (`-m` for sweeps, `--cfg job` to print the composed config, `--help`):

    isa4d train-vae trainer=gpu data.batch_size=8
    isa4d train-dit -m experiment=dit_ablate_cpu model.vae_ckpt=VAE.ckpt seed=1,2,3 +variant=isa,isa_no_pe

Plain commands use ordinary flags: `isa4d body convert SMPL.pkl SMPL_NEUTRAL.npz`,
`isa4d ablate-report logs/ablate/<time>`.

Errors: a user error (an `isa4d.errors.ISA4DError`, a Hydra override or composition error, a wrongly
typed or missing config value) prints one line, `isa4d <command>: error: <message>`, on stderr, without a
traceback, and exits `EXIT_CONFIG` (2) when the command line or config is wrong (`ConfigError`) or
`EXIT_ERROR` (1) when a named file or its data is (missing file, bad checkpoint, bad data). Ctrl-C prints
`isa4d <command>: interrupted` and exits `EXIT_INTERRUPTED` (130). Any other exception is a bug and keeps
its traceback; `isa4d --debug <command> ...` (or `ISA4D_DEBUG=1`) shows the traceback of user errors too.
In a sweep (`-m`) the other jobs still run, and Hydra names the failed job's overrides on the line before.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from importlib import import_module
from typing import Any

from isa4d import __version__
from isa4d.config import check_targets, config_dir
from isa4d.errors import ConfigError, ISA4DError

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
    "plan": ("plan", "isa4d.plan:main", "memory per GPU of a training run (model on the meta device)"),
}

EXIT_ERROR = 1
"""Exit status of a user error about a named file or its data (missing file, bad checkpoint, bad data)."""
EXIT_CONFIG = 2
"""Exit status of a wrong command line or config value (`ConfigError`, Hydra and OmegaConf config errors)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as a shell reports it."""
OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
DEBUG_ENV = "ISA4D_DEBUG"
"""Set to 1 (like `isa4d --debug`) for the full traceback of user errors."""


class _Reported(BaseException):
    """Carries a user error of a single Hydra run out past Hydra's `except Exception` of the job, which
    would print "Error executing job with overrides: ..." before it (a BaseException passes it)."""

    def __init__(self, error: ISA4DError) -> None:
        super().__init__(str(error))
        self.error = error


def _load(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    return getattr(import_module(module), name)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _config_message(error: BaseException) -> str:
    """One line for a Hydra or OmegaConf config error, naming the key where the error knows it."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException, ValidationError

    first = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, MissingMandatoryValue) and error.full_key:
        return f"{error.full_key} is required (??? in the config): give {error.full_key}=VALUE"
    if isinstance(error, OmegaConfBaseException):
        return f"{error.full_key}: {first}" if error.full_key and error.full_key not in first else first
    if isinstance(error, MissingConfigException) and error.options:
        return f"{first}; choose one of: {', '.join(error.options)}"
    if isinstance(error, OverrideParseException):
        return f"cannot parse the overrides: {first} (see {OVERRIDE_GRAMMAR})"
    text = _one_line(str(error))
    if isinstance(error.__cause__, ValidationError):
        text += f" ({_config_message(error.__cause__)})"
    return text


def user_error(error: BaseException) -> ISA4DError | None:
    """The user error `error` stands for, or None if it is a bug (which keeps its traceback).

    An `ISA4DError` is itself; a Hydra `InstantiationException` stands for its cause (the error the
    target raised), or is a config error when it has none; Hydra's other errors (overrides, composition,
    unknown config group options) and OmegaConf's missing, mistyped or unresolvable values become a
    `ConfigError` with one line naming the key.
    """
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import (
        GrammarParseError,
        InterpolationResolutionError,
        MissingMandatoryValue,
        ValidationError,
    )

    config_errors = (MissingMandatoryValue, ValidationError, InterpolationResolutionError, GrammarParseError)
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, ISA4DError):
        return error
    if isinstance(error, (HydraException, *config_errors)):
        converted = ConfigError(_config_message(error))
        converted.__cause__ = error
        return converted
    return None


def exit_status(error: ISA4DError) -> int:
    """`EXIT_CONFIG` for a `ConfigError`, `EXIT_ERROR` for any other user error."""
    return EXIT_CONFIG if isinstance(error, ConfigError) else EXIT_ERROR


def _check_train(cfg: Any) -> None:
    """A `data` or `model` that `isa4d.train.train` would refuse (a ValueError), as a `ConfigError`."""
    from isa4d.train import _require_target

    for key in ("data", "model"):
        try:
            _require_target(cfg, key)
        except ValueError as error:
            raise ConfigError(str(error)) from error


PRECHECKS: dict[str, Callable[[Any], None]] = {"train-vae": _check_train, "train-dit": _check_train}
"""Checks of a command's config that its task does not make first (run after `check_targets`)."""


def _hydra_task(command: str, debug: bool) -> Callable[[Any], Any]:
    """The Hydra task of `command`: the config checks, then the task (imported only now, so config errors
    come back fast). A user error of a single run leaves the job as `_Reported` (unless `debug`)."""
    module, _, name = HYDRA_COMMANDS[command][1].partition(":")

    def task(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        try:
            check_targets(cfg)
            PRECHECKS.get(command, lambda cfg: None)(cfg)
            return _load(f"{module}:{name}")(cfg)
        except Exception as error:
            reported = user_error(error)
            if reported is None or debug or HydraConfig.get().mode != RunMode.RUN:
                raise
            raise _Reported(reported) from error

    # Hydra names the job after the task's module, as when it ran the task function itself.
    task.__module__, task.__name__, task.__qualname__ = module, name, name
    return task


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def run_hydra(command: str, overrides: list[str], debug: bool = False) -> None:
    """Run a Hydra task with `overrides` as its command line.

    Errors are raised, not printed by Hydra (`HYDRA_FULL_ERROR=1` while it runs): a user error of a
    single run as `_Reported` (unless `debug`), anything else as itself.
    """
    import hydra

    config_name = HYDRA_COMMANDS[command][0]
    sys.argv = [f"isa4d {command}", *overrides]
    main = hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")
    with _environment("HYDRA_FULL_ERROR", "1"):
        main(_hydra_task(command, debug))()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isa4d", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"isa4d {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help=f"full tracebacks of user errors too (or {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (config_name, _, help_text) in HYDRA_COMMANDS.items():
        sub.add_parser(name, help=f"{help_text} (Hydra: conf/{config_name}.yaml)", add_help=False)
    _load("isa4d.body.cli:add_cli")(sub)
    _load("isa4d.ablate:add_cli")(sub)
    return parser


def _run(argv: list[str], debug: bool) -> None:
    if argv and argv[0] in HYDRA_COMMANDS:
        run_hydra(argv[0], argv[1:], debug)
        return
    args = build_parser().parse_args(argv)
    args.func(args)


def _on_sigint(interrupted: list[int], signum: int, frame: Any) -> None:
    interrupted.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """`isa4d [--debug] COMMAND ...`: run the command; a user error or Ctrl-C ends it with one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    while argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    command = next((arg for arg in argv if not arg.startswith("-")), "")
    interrupted: list[int] = []  # Lightning turns Ctrl-C during `fit` into exit(1): remember it was one
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, partial(_on_sigint, interrupted)) if main_thread else None
    try:
        _run(argv, debug)
        return
    except _Reported as reported:
        error: ISA4DError | None = reported.error
    except KeyboardInterrupt:
        if debug:
            raise
        error = None
    except SystemExit as exit_:
        if debug or not interrupted or exit_.code in (0, None):
            raise
        error = None
    except Exception as raised:
        error = user_error(raised)
        if error is None or debug:
            raise
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if error is None:
        print(f"isa4d {command}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    print(f"isa4d {command}: error: {_one_line(str(error))}", file=sys.stderr)
    sys.exit(exit_status(error))


if __name__ == "__main__":
    main()
