"""User errors of the `isa4d` command: one line on stderr, a documented exit status, no traceback (unless
`--debug` / `ISA4D_DEBUG=1`), and checked before any work; Ctrl-C is one line and exit 130.

In-process tests run `isa4d.cli.main` on the real configs with a stub task (`stub_task`, chosen with
`+stub=<behaviour>`); the table of bad inputs runs the real command in a subprocess."""

from __future__ import annotations

import ast
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

import isa4d
import isa4d.encode
import isa4d.evaluate
import isa4d.generate
from conftest import compose_for_test
from isa4d.cli import EXIT_CONFIG, EXIT_ERROR, EXIT_INTERRUPTED, HYDRA_COMMANDS, main
from isa4d.config import (
    accepts,
    check_output_dir,
    check_output_file,
    check_targets,
    compose,
    config_dir,
    describe,
    option,
    require_dir,
    require_file,
)
from isa4d.errors import CheckpointError, ConfigError, MissingFileError

ISA4D = [sys.executable, "-m", "isa4d"]
TESTS = Path(__file__).parent

# ---------------------------------------------------------------------------------------------- stub task


def refuse_checkpoint(path: str) -> None:
    """A `_target_` that refuses its argument, as a loader of a bad file would."""
    raise CheckpointError(f"{path} is not a checkpoint")


def stub_task(cfg: Any) -> None:
    """Hydra task that misbehaves as `cfg.stub` says."""
    behaviour = cfg.stub
    if behaviour == "ok":
        Path(cfg.paths.log_dir, "ok").write_text("ran")
    elif behaviour == "config":
        raise ConfigError("steps='abc': expected an integer\n(a second line)")
    elif behaviour == "missing":
        raise MissingFileError("ckpt_path=nowhere.ckpt: no such file")
    elif behaviour == "instantiate":
        instantiate({"_target_": "test_cli_errors.refuse_checkpoint", "path": "weights.bin"})
    elif behaviour == "mandatory":
        print(cfg.ckpt_path)  # ??? in conf/generate.yaml
    elif behaviour == "bug":
        raise RuntimeError("a bug")
    elif behaviour == "interrupt":  # Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    elif behaviour == "lightning_interrupt":  # what Lightning's fit does with Ctrl-C
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            sys.exit(1)


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    """`run(*argv) -> (exit status, stdout, stderr)` of `isa4d.cli.main` in this process; `generate` runs
    `stub_task` on conf/generate.yaml."""
    monkeypatch.setitem(HYDRA_COMMANDS, "generate", ("generate", "test_cli_errors:stub_task", "stub"))
    monkeypatch.setattr(sys, "argv", ["isa4d"])
    monkeypatch.setenv("ISA4D_LOGS", str(tmp_path))
    monkeypatch.delenv("ISA4D_DEBUG", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            main(list(argv))
            status = 0
        except SystemExit as exit_info:
            status = exit_info.code
        finally:
            GlobalHydra.instance().clear()
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    yield run
    root.handlers[:] = handlers  # Hydra's job logging wrote to this test's captured stdout
    root.setLevel(level)


# ---------------------------------------------------------------------------------------------- one line


@pytest.mark.parametrize(
    ("stub", "status", "message"),
    [
        ("config", EXIT_CONFIG, "steps='abc': expected an integer (a second line)"),
        ("missing", EXIT_ERROR, "ckpt_path=nowhere.ckpt: no such file"),
        ("instantiate", EXIT_ERROR, "weights.bin is not a checkpoint"),  # unwrapped from Hydra
        ("mandatory", EXIT_CONFIG, "ckpt_path is required (??? in the config): give ckpt_path=VALUE"),
    ],
)
def test_user_errors_are_one_line_with_their_exit_status(cli, stub, status, message):
    assert cli("generate", f"+stub={stub}") == (status, "", f"isa4d generate: error: {message}\n")


def test_bugs_keep_their_traceback(cli):
    with pytest.raises(RuntimeError, match="a bug"):
        cli("generate", "+stub=bug")


def test_debug_flag_and_environment_show_the_traceback(cli, monkeypatch):
    with pytest.raises(ConfigError, match="steps='abc'"):
        cli("--debug", "generate", "+stub=config")
    monkeypatch.setenv("ISA4D_DEBUG", "1")
    with pytest.raises(MissingFileError, match="nowhere.ckpt"):
        cli("generate", "+stub=missing")
    with pytest.raises(KeyboardInterrupt):
        cli("generate", "+stub=interrupt")


@pytest.mark.parametrize("stub", ["interrupt", "lightning_interrupt"])
def test_ctrl_c_is_one_line_and_exit_130(cli, stub):
    previous = signal.getsignal(signal.SIGINT)
    assert cli("generate", f"+stub={stub}") == (EXIT_INTERRUPTED, "", "isa4d generate: interrupted\n")
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back


def test_a_sweep_runs_its_other_jobs_then_reports_one_line(cli, tmp_path):
    status, _, err = cli("generate", "-m", "+stub=config,ok")
    assert status == EXIT_CONFIG and (tmp_path / "ok").read_text() == "ran"  # job 1 ran after job 0 failed
    lines = err.splitlines()
    assert lines[0] == "Error executing job with overrides: ['+stub=config']"  # Hydra names the job
    assert lines[1:] == ["isa4d generate: error: steps='abc': expected an integer (a second line)"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train-vae", "data=nosuch"],
            "In 'train_vae': Could not find 'data/nosuch'; choose one of: human, human_latents, video",
        ),
        (["train-vae", "nosuch=1"], "Could not override 'nosuch'. To append to your config use +nosuch=1"),
        (
            ["train-vae", "trainer.max_steps=[1,"],
            "cannot parse the overrides: no viable alternative at input",
        ),
        (
            ["train-vae", "hydra.job.chdir=abc"],
            "(hydra.job.chdir: Value 'abc' is not a valid bool (type str))",
        ),
        (["train-vae", "trainer.max_steps=${nope}"], "trainer.max_steps: Interpolation key 'nope' not found"),
        (
            ["train-vae", "trainer.max_steps=1.5x"],
            "trainer.max_steps='1.5x': expected an integer (argument 'max_steps' of "
            "lightning.pytorch.Trainer)",
        ),
        (
            ["train-dit", "experiment=dit_tiny_cpu", "data.batch_size=abc"],
            "data.batch_size='abc': expected an integer (argument 'batch_size' of "
            "isa4d.data.latents.HumanLatentDataModule)",
        ),
        (
            ["train-dit", "experiment=dit_tiny_cpu", "data.train_dirs=somewhere"],
            "data.train_dirs='somewhere': expected a list or null",
        ),
        (
            ["train-vae", "trainer=cpu"],
            "No `data` configured for task 'train_vae': select one with `data=<name>`",
        ),
    ],
)
def test_config_errors_name_the_key_before_the_task_runs(cli, argv, message):
    status, _, err = cli(*argv)
    assert status == EXIT_CONFIG and err.count("\n") == 1
    assert err.startswith(f"isa4d {argv[0]}: error: ") and message in err


# ---------------------------------------------------------------------------------------------- checks


def test_accepts_and_describe():
    assert accepts(int, 3) and not accepts(int, "abc") and not accepts(int, 1.5) and not accepts(int, True)
    assert accepts(float, 3) and not accepts(float, "1e-4") and accepts(bool, False) and not accepts(bool, 1)
    assert accepts(list[str], OmegaConf.create(["a"])) and not accepts(list[str], "a")
    assert not accepts(list[int], OmegaConf.create(["a"])) and accepts(str | list[str], "a")
    assert accepts(tuple[int, int], [1, 2]) and not accepts(tuple[int, int], [1, 2, 3])
    assert accepts(int | None, None) and not accepts(type(None), 0) and accepts(dict[str, int], {"a": 1})
    assert accepts(object, "x") and accepts(Path, "a/b") and not accepts(Path, ["a"])
    assert describe(int | None) == "an integer or null" and describe(list[int]) == "a list"
    from typing import Literal

    assert describe(Literal["a", 1] | None) == "one of 'a', 1 or null"


def test_option_names_key_value_and_type():
    cfg = OmegaConf.create({"steps": "abc", "sizes": [8, 16], "none": None, "scale": 2})
    with pytest.raises(ConfigError, match=r"^steps='abc': expected an integer$"):
        option(cfg, "steps", int)
    with pytest.raises(ConfigError, match="none=null: expected a number"):
        option(cfg, "none", float)
    assert option(cfg, "none", int | None) is None and option(cfg, "scale", float) == 2.0
    assert list(option(cfg, "sizes", list[int])) == [8, 16]


@pytest.mark.slow
def test_every_shipped_config_passes_the_target_check():
    names = ["generate", "prepare", "synth", "footage", "encode", "evaluate", "plan"]
    cases = [(name, []) for name in names]
    for experiment in sorted((config_dir() / "experiment").glob("*.yaml")):
        root = "train_vae" if experiment.stem.startswith("vae") else "train_dit"
        cases.append((root, [f"experiment={experiment.stem}"]))
    for variant in sorted((config_dir() / "variant").glob("*.yaml")):
        cases.append(("train_dit", ["experiment=dit_tiny_cpu", f"+variant={variant.stem}"]))
    for data in ("human", "video"):
        cases.append(("train_vae", [f"data={data}", "trainer=ddp", "logger=many", "model=vae_sd3"]))
    for name, overrides in cases:
        check_targets(compose(name, overrides))  # no ConfigError
        GlobalHydra.instance().clear()


def test_target_check_refuses_unknown_targets_and_arguments():
    cfg = compose("train_dit", ["experiment=dit_tiny_cpu", "model._target_=isa4d.nope.X"])
    with pytest.raises(ConfigError, match=r"model._target_='isa4d.nope.X' cannot be imported"):
        check_targets(cfg)
    GlobalHydra.instance().clear()
    # A target that takes **kwargs: the suite's classes pass them to their base, whose arguments are known.
    cfg = compose("train_dit", ["experiment=dit_tiny_cpu", "+data.batchsize=3"])
    refused = r"^data.batchsize is not an argument of isa4d.data.latents.HumanLatentDataModule \(it takes: "
    with pytest.raises(ConfigError, match=refused + ".*batch_size"):
        check_targets(cfg)
    GlobalHydra.instance().clear()
    cfg = compose("train_vae", ["experiment=vae_tiny_cpu", "+trainer.max_step=3"])
    with pytest.raises(
        ConfigError, match=r"trainer.max_step is not an argument of lightning.pytorch.Trainer"
    ):
        check_targets(cfg)


def test_the_suites_classes_pass_their_kwargs_to_their_base():
    """What lets `check_targets` treat their arguments as closed: every `__init__` of the suite that takes
    `**kwargs` hands them to `super().__init__`."""
    found = []
    for path in sorted((Path(isa4d.__file__).parent).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for init in node.body:
                if not (isinstance(init, ast.FunctionDef) and init.name == "__init__" and init.args.kwarg):
                    continue
                found.append(f"{path.name}:{node.name}")
                kwargs = init.args.kwarg.arg
                assert any(
                    isinstance(call, ast.Call)
                    and ast.unparse(call.func) == "super().__init__"
                    and any(k.arg is None and ast.unparse(k.value) == kwargs for k in call.keywords)
                    for call in ast.walk(init)
                ), f"{path}: {node.name}.__init__ does not pass **{kwargs} to super().__init__"
    assert "datamodules.py:HumanVideoDataModule" in found  # the scan sees them


def test_paths_are_checked_without_creating_anything(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    assert require_file(tmp_path / "file.txt", "ckpt_path") == tmp_path / "file.txt"
    with pytest.raises(MissingFileError, match=f"^ckpt_path={tmp_path}/nope: no such file$"):
        require_file(tmp_path / "nope", "ckpt_path")
    with pytest.raises(MissingFileError, match=f"ckpt_path={tmp_path} is a folder"):
        require_file(tmp_path, "ckpt_path")
    with pytest.raises(MissingFileError, match="input_dir=.*: no such folder"):
        require_dir(tmp_path / "nope", "input_dir")
    with pytest.raises(MissingFileError, match="input_dir=.*file.txt: is a file, not a folder"):
        require_dir(tmp_path / "file.txt", "input_dir")

    assert check_output_file(tmp_path / "a" / "b" / "v.mp4", "output", (".mp4",)) == tmp_path / "a/b/v.mp4"
    with pytest.raises(ConfigError, match=r"output=.*v.avi: the file name must end in .mp4"):
        check_output_file(tmp_path / "v.avi", "output", (".mp4",))
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(ConfigError, match=r"output=.*dir.mp4 is an existing folder"):
        check_output_file(tmp_path / "dir.mp4", "output", (".mp4",))
    with pytest.raises(ConfigError, match=r"file.txt is a file, so the folder cannot be created"):
        check_output_file(tmp_path / "file.txt" / "sub" / "v.mp4", "output", (".mp4",))
    with pytest.raises(ConfigError, match=r"output_dir=.*file.txt is an existing file"):
        check_output_dir(tmp_path / "file.txt", "output_dir")
    assert check_output_dir(tmp_path / "new" / "out", "output_dir") == tmp_path / "new" / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.mp4", "file.txt"]  # nothing created


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_unwritable_output_folder_is_refused(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match=r"output=.*cannot write in .*read_only \(Permission denied\)"):
        check_output_file(folder / "sub" / "v.mp4", "output", (".mp4",))


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a model was loaded before the inputs were checked")


def test_generate_checks_its_output_before_inputs_and_model(tmp_path, monkeypatch):
    monkeypatch.setattr(isa4d.generate, "load_dit_module", _refuse)
    (tmp_path / "dit.ckpt").write_bytes(b"")
    cfg = compose_for_test("generate", tmp_path, [f"ckpt_path={tmp_path / 'dit.ckpt'}"])
    with open_dict(cfg):
        cfg.reference.shards = str(tmp_path / "no_shards")  # would fail later, when the inputs are read
    for output, problem in [
        (tmp_path, " is an existing folder"),
        (tmp_path / "video.gif", ": the file name must end in .mp4"),
        (tmp_path / "dit.ckpt" / "video.mp4", ": .*dit.ckpt is a file, so the folder cannot be created"),
    ]:
        cfg.output = str(output)
        with pytest.raises(ConfigError, match=f"^output={re.escape(str(output))}{problem}"):
            isa4d.generate.generate(cfg)
    cfg.output = str(tmp_path / "out" / "video.mp4")
    with pytest.raises(MissingFileError, match="reference.shards=.*no_shards has no manifest.json"):
        isa4d.generate.generate(cfg)
    assert not (tmp_path / "out").exists()


def test_evaluate_checks_data_and_output_before_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(isa4d.evaluate, "vae_rows", _refuse)
    (tmp_path / "vae.ckpt").write_bytes(b"")
    overrides = [
        f"ckpt_path={tmp_path / 'vae.ckpt'}",
        "splits=[video]",
        f"datasets.video.dir={tmp_path / 'nope'}",
    ]
    cfg = compose_for_test("evaluate", tmp_path, overrides)
    with pytest.raises(MissingFileError, match=r"^datasets.video.dir=.*nope: no such folder$"):
        isa4d.evaluate.evaluate(cfg)
    cfg.datasets.video.dir = str(tmp_path)
    with pytest.raises(MissingFileError, match=r"datasets.video.dir=.* has no manifest.json"):
        isa4d.evaluate.evaluate(cfg)
    cfg.batch_size = "two"
    with pytest.raises(ConfigError, match=r"^batch_size='two': expected an integer$"):
        isa4d.evaluate.evaluate(cfg)
    cfg.batch_size, cfg.device = 1, "gpu"
    with pytest.raises(ConfigError, match=r"device='gpu' is not a device"):
        isa4d.evaluate.evaluate(cfg)


def test_encode_checks_its_paths_before_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(isa4d.encode, "load_vae", _refuse)
    (tmp_path / "vae.ckpt").write_bytes(b"")
    (tmp_path / "shards").mkdir()
    options = {
        "ckpt_path": tmp_path / "vae.ckpt",
        "input_dir": tmp_path / "nope",
        "output_dir": tmp_path / "out",
    }
    cfg = compose("encode", [f"{key}={value}" for key, value in options.items()])
    with pytest.raises(MissingFileError, match=r"^input_dir=.*nope: no such folder$"):
        isa4d.encode.encode(cfg)
    cfg.input_dir = str(tmp_path / "shards")
    cfg.output_dir = str(tmp_path / "vae.ckpt")
    with pytest.raises(ConfigError, match=r"^output_dir=.*vae.ckpt is an existing file; give a folder$"):
        isa4d.encode.encode(cfg)
    cfg.output_dir = str(tmp_path / "out")
    cfg.num_versions = "4x"
    with pytest.raises(ConfigError, match=r"^num_versions='4x': expected an integer$"):
        isa4d.encode.encode(cfg)
    cfg.num_versions = 4
    with pytest.raises(MissingFileError, match=r"^input_dir=.*shards has no manifest.json"):
        isa4d.encode.encode(cfg)


# ---------------------------------------------------------------------------------------------- real CLI


def _environment(cwd: Path, **env: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "ISA4D_DEBUG"}
    return {**environment, "ISA4D_LOGS": str(cwd / "logs"), "PYTHONPATH": str(TESTS), **env}


def _isa4d(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ISA4D, *args], cwd=cwd, env=_environment(cwd, **env), capture_output=True, text=True, timeout=120
    )


def test_real_cli_config_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    result = _isa4d("train-vae", "data=nosuch", cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.splitlines() == [
        "isa4d train-vae: error: In 'train_vae': Could not find 'data/nosuch'; choose one of: "
        "human, human_latents, video"
    ]
    debug = _isa4d("--debug", "train-vae", "data=nosuch", cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "hydra.errors.MissingConfigException: In 'train_vae': Could not find 'data/nosuch'" in debug.stderr


@pytest.fixture
def files(tmp_path) -> Path:
    """A stand-in checkpoint file (never loaded: every case fails before) and a plain file."""
    (tmp_path / "model.ckpt").write_bytes(b"not loaded")
    (tmp_path / "plain.txt").write_text("a file, not a folder")
    return tmp_path


BAD_INPUTS = [
    (
        "missing ckpt",
        ["generate", "ckpt_path={tmp}/missing.ckpt"],
        EXIT_ERROR,
        "ckpt_path={tmp}/missing.ckpt",
    ),
    ("bad override type", ["train-vae", "trainer.max_steps=1.5x"], EXIT_CONFIG, "trainer.max_steps='1.5x'"),
    ("unknown config group option", ["train-dit", "model=dit_huge"], EXIT_CONFIG, "'model/dit_huge'"),
    (
        "output is a folder",
        ["generate", "ckpt_path={tmp}/model.ckpt", "output={tmp}"],
        EXIT_CONFIG,
        "output={tmp}",
    ),
    (
        "unwritable output",
        ["generate", "ckpt_path={tmp}/model.ckpt", "output={tmp}/plain.txt/v.mp4"],
        EXIT_CONFIG,
        "output={tmp}/plain.txt/v.mp4",
    ),
    (
        "missing input dir",
        ["encode", "ckpt_path={tmp}/model.ckpt", "input_dir={tmp}/nope", "output_dir={tmp}/out"],
        EXIT_ERROR,
        "input_dir={tmp}/nope",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "argv", "status", "mention"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_inputs_through_the_real_cli(files, case, argv, status, mention):
    argv = [arg.format(tmp=files) for arg in argv]
    result = _isa4d(*argv, cwd=files)
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"isa4d {argv[0]}: error: "), result.stderr
    assert mention.format(tmp=files) in lines[0] and "Traceback" not in result.stderr + result.stdout
    assert not (files / "out").exists()
    debug = _isa4d(*argv, cwd=files, ISA4D_DEBUG="1")
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr


@pytest.mark.slow
def test_real_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """SIGINT while a training command builds its data (a `time.sleep` target): one line, 130."""
    argv = [
        "train-vae",
        "trainer=cpu",
        "+data={_target_: time.sleep, _args_: [60]}",
        "+model={_target_: toy_lightning.ToyModule}",
    ]
    process = subprocess.Popen(
        [*ISA4D, *argv],
        cwd=tmp_path,
        env=_environment(tmp_path, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in process.stdout:  # Hydra's job log: the datamodule is being built
            if "Instantiating datamodule" in line:
                break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == EXIT_INTERRUPTED
    assert err.splitlines()[-1] == "isa4d train-vae: interrupted"  # after the run's own log lines
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
