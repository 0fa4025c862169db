"""Locating and composing the Hydra configuration tree (`conf/`)."""

from __future__ import annotations

import inspect
import os
import tempfile
from collections import abc
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from isa4d.errors import ConfigError, MissingFileError

ROOT_CONFIGS = (
    "train_vae",
    "train_dit",
    "generate",
    "prepare",
    "synth",
    "footage",
    "encode",
    "evaluate",
    "plan",
)


def config_dir() -> Path:
    """The `conf/` folder: `$ISA4D_CONFIG_DIR` if set, else the one beside `src/` in the repository."""
    override = os.environ.get("ISA4D_CONFIG_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "train_vae.yaml").is_file():
        raise FileNotFoundError(
            f"ISA4D config tree not found at {path}. Run from a clone of the repository (pip install -e .) "
            "or set ISA4D_CONFIG_DIR to its conf/ folder."
        )
    return path


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a root config as a Hydra run would see it, outside a run (tests, notebooks).

    The `hydra` node is removed from the result and held by `HydraConfig.get()`, as during a run,
    so `${hydra:...}` interpolations resolve.

    Args:
        config_name: one of `ROOT_CONFIGS`.
        overrides: Hydra override strings, e.g. `["trainer=cpu", "debug=fast_dev_run"]`.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    if config_name not in ROOT_CONFIGS:
        raise ValueError(f"unknown root config {config_name!r}; choose one of {ROOT_CONFIGS}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides or [], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# ---------------------------------------------------------------------------------------------- checks
# Checks of what a user gave, run before any work: each raises one sentence naming the key.

_SEQUENCES = (list, tuple, abc.Sequence, abc.MutableSequence, abc.Collection, abc.Iterable)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)
_CONTAINERS = (list, tuple, dict, ListConfig, DictConfig)
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}


def accepts(hint: Any, value: Any) -> bool:
    """Whether a config value (after OmegaConf parsing) fits the type hint of the argument it goes to.

    Lenient where a hint does not say enough: `None`, a nested `_target_` node and any class or protocol
    other than the builtin scalars, containers and `Literal` are accepted (the target decides).
    """
    if hint is type(None):
        return value is None
    if value is None or hint in (Any, object, inspect.Parameter.empty):
        return True
    if isinstance(value, DictConfig | dict) and "_target_" in value:
        return True
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return any(accepts(arg, value) for arg in args)
    if origin is Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint in (str, Path, os.PathLike):
        return not isinstance(value, _CONTAINERS)
    container = origin or hint
    if container in _SEQUENCES:
        if not isinstance(value, list | tuple | ListConfig):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(accepts, args, value))
        return not args or all(accepts(args[0], item) for item in value)
    if container in _MAPPINGS:
        if not isinstance(value, dict | DictConfig):
            return False
        return len(args) < 2 or all(accepts(args[1], item) for item in value.values())
    return True


def describe(hint: Any) -> str:
    """A type hint in words for an error message: `int | None` -> "an integer or null"."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        literals = [value for arg in args if get_origin(arg) is Literal for value in get_args(arg)]
        others = [arg for arg in args if get_origin(arg) is not Literal and arg is not type(None)]
        words = list(dict.fromkeys(describe(arg) for arg in others))
        words += [describe(Literal[tuple(literals)])] * bool(literals) + ["null"] * (type(None) in args)
        return " or ".join(words)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if hint in _NAMES:
        return _NAMES[hint]
    container = origin or hint
    if container in _SEQUENCES:
        return "a list" + (
            f" of {len(args)} values" if container is tuple and args and Ellipsis not in args else ""
        )
    if container in _MAPPINGS:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    return repr(OmegaConf.to_container(value) if isinstance(value, ListConfig | DictConfig) else value)


def option(cfg: DictConfig, key: str, kind: Any) -> Any:
    """`cfg[key]` (a dotted key), checked against the hint `kind` (`int`, `float`, `int | None`, `list`...);
    a `float` option is returned as a float.

    Raises:
        ConfigError: the value does not fit, naming the key, the value and what was expected.
    """
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if (value is None and type(None) not in get_args(kind)) or not accepts(kind, value):
        raise ConfigError(f"{key}={_shown(value)}: expected {describe(kind)}")
    return float(value) if kind is float else value


def option_subset(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    """`cfg[key]`: a non-empty list of distinct names from `choices`, as a tuple.

    Raises:
        ConfigError: the value is not such a list, naming the key, the value and the choices.
    """
    names = option(cfg, key, list)
    if not names or len(set(names)) != len(names) or any(name not in choices for name in names):
        raise ConfigError(
            f"{key}={_shown(names)}: expected a non-empty list of distinct names from {list(choices)}"
        )
    return tuple(names)


def _arguments(target: Callable) -> tuple[dict[str, Any], bool]:
    """The keyword arguments of `target` with their type hints (`inspect.Parameter.empty`: none), and
    whether that list is closed (no `**kwargs`). A class taking `**kwargs` adds the arguments of the
    `__init__` of its bases (where they usually go); a hint that cannot be evaluated is left out. The
    suite's own classes pass their `**kwargs` to `super().__init__` (tests/test_cli_errors.py checks the
    source), so their list is closed when their bases' is."""
    functions = [target]
    if isinstance(target, type):
        functions = [klass.__init__ for klass in target.__mro__[:-1] if "__init__" in vars(klass)]
    arguments: dict[str, Any] = {}
    forwarded = True  # every `**kwargs` so far goes on to the next base's `__init__`
    for index, function in enumerate(functions):
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):  # a builtin without a signature: nothing known
            return {}, False
        try:
            hints = get_type_hints(function)
        except Exception:  # an annotation that cannot be evaluated here (a TYPE_CHECKING import)
            hints = {}
        for position, (name, parameter) in enumerate(parameters.items()):
            keyword = parameter.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            )
            if keyword and not (position == 0 and function is not target):  # not `self`
                arguments.setdefault(name, hints.get(name, inspect.Parameter.empty))
        if all(p.kind != inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return arguments, index == 0 or forwarded
        forwarded = forwarded and isinstance(target, type) and _is_ours(function)
    return arguments, False


def _is_ours(function: Callable) -> bool:
    """Whether `function` is defined in the suite (whose `__init__`s pass `**kwargs` to their base)."""
    return getattr(function, "__module__", "").partition(".")[0] == "isa4d"


def _locate(target: Any, key: str) -> Callable:
    from hydra._internal.utils import _locate  # what `instantiate` uses (`get_object` also logs an error)

    try:
        return _locate(str(target))
    except ImportError as error:
        if not isinstance(error.__cause__, ModuleNotFoundError | AttributeError):
            raise
        raise ConfigError(f"{key}={target!r} cannot be imported: {error.__cause__}") from error


def check_targets(node: Any, prefix: str = "") -> None:
    """Check every `_target_` node under `node` against its target's signature before anything is built.

    A key that is not an argument of the target (when it takes no `**kwargs`), or a value its type hint
    rules out (`data.batch_size=abc`, `trainer.max_steps=1.5x`, a string where a list is expected), is
    refused with the key, the value and what was expected.

    Raises:
        ConfigError: naming the first wrong key.
    """
    if isinstance(node, ListConfig):
        for index in range(len(node)):
            if not OmegaConf.is_missing(node, index):
                check_targets(node[index], f"{prefix}[{index}]")
        return
    if not isinstance(node, DictConfig):
        return
    dot = f"{prefix}." if prefix else ""
    target = node.get("_target_") if "_target_" in node else None
    arguments, closed = ({}, False) if target is None else _arguments(_locate(target, f"{dot}_target_"))
    for key in node:
        name = str(key)
        if OmegaConf.is_missing(node, key) or (target is not None and name.startswith("_")):
            continue
        value = node[key]
        if closed and name not in arguments:
            raise ConfigError(
                f"{dot}{name} is not an argument of {target} (it takes: {', '.join(arguments) or 'none'}); "
                "remove it or fix its name"
            )
        hint = arguments.get(name, inspect.Parameter.empty)
        if not accepts(hint, value):
            raise ConfigError(
                f"{dot}{name}={_shown(value)}: expected {describe(hint)} (argument {name!r} of {target})"
            )
        check_targets(value, f"{dot}{name}")


def require_file(path: Any, key: str) -> Path:
    """`path` as a `Path`, if it is an existing file.

    Raises:
        MissingFileError: "<key>=<path>: no such file" (or "is a folder, not a file").
    """
    path = Path(str(path))
    if path.is_dir():
        raise MissingFileError(f"{key}={path} is a folder; give a file")
    if not path.is_file():
        raise MissingFileError(f"{key}={path}: no such file")
    return path


def require_dir(path: Any, key: str) -> Path:
    """`path` as a `Path`, if it is an existing folder.

    Raises:
        MissingFileError: "<key>=<path>: no such folder" (or "is a file, not a folder").
    """
    path = Path(str(path))
    if not path.is_dir():
        raise MissingFileError(
            f"{key}={path}: {'is a file, not a folder' if path.exists() else 'no such folder'}"
        )
    return path


def _check_creatable(path: Path, key: str) -> None:
    """Refuse `path` if its nearest existing ancestor is not a folder this process can write in (tried
    with a temporary file, so it holds for root and read-only file systems too); nothing is created."""
    ancestor = path.parent.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{key}={path}: {ancestor} is a file, so the folder cannot be created")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise ConfigError(f"{key}={path}: cannot write in {ancestor} ({error.strerror})") from error


def check_output_file(path: Any, key: str, suffixes: tuple[str, ...]) -> Path:
    """`path` as a `Path`, if a file can be written there: its suffix is one of `suffixes`, it is not
    an existing folder, and its folder exists or can be created and is writable (nothing is created).

    Raises:
        ConfigError: naming `key`, the path and the problem.
    """
    path = Path(str(path))
    if path.is_dir():
        raise ConfigError(f"{key}={path} is an existing folder; give a file path ending in {suffixes[0]}")
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"{key}={path}: the file name must end in {' or '.join(suffixes)}")
    _check_creatable(path, key)
    return path


def check_output_dir(path: Any, key: str) -> Path:
    """`path` as a `Path`, if it is a writable folder or can be created as one (nothing is created).

    Raises:
        ConfigError: naming `key`, the path and the problem.
    """
    path = Path(str(path))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is an existing file; give a folder")
    _check_creatable(path / "file", key)
    return path
