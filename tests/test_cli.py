"""The `isa4d` command's parsing (in-process; the Hydra commands are run end to end in test_train.py)."""

from __future__ import annotations

import pytest

from isa4d import __version__
from isa4d.cli import HYDRA_COMMANDS, build_parser, main
from isa4d.config import config_dir


def test_every_hydra_command_has_its_root_config():
    for config_name, _, _ in HYDRA_COMMANDS.values():
        assert (config_dir() / f"{config_name}.yaml").is_file()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_body_commands_are_registered():
    args = build_parser().parse_args(["body", "convert", "a.pkl", "b.npz"])
    assert callable(args.func)


def test_missing_config_dir_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("ISA4D_CONFIG_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ISA4D_CONFIG_DIR"):
        config_dir()
