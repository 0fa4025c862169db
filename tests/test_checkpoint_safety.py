"""Checkpoints are untrusted files: read with `weights_only=True` only, refused with one `CheckpointError`.

Every loader of the suite (`read_checkpoint`, `load_vae`, `load_dit_module`, a DiT's `vae_ckpt`, the
resume of `isa4d.train`) is tried on a pickle whose `__reduce__` would create a marker file, with
`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` set (which flips torch's default to full unpickling): the marker
never appears. Real checkpoints of both stages, written by Lightning, hold no other objects. Sharded
checkpoint folders (`trainer=fsdp`), which torch reads partly with plain pickle, are checked first.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed.checkpoint as dcp
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import open_dict
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

import isa4d.train
from conftest import compose_for_test, with_toy_task
from dit_fixtures import DIT_CONFIG, dit_ckpt, human_shards, vae_ckpt
from isa4d.callbacks import LatentStatistics
from isa4d.errors import CheckpointError, MissingFileError
from isa4d.modules import DiTModule, check_sharded_checkpoint, load_dit_module, load_vae, read_checkpoint
from isa4d.modules.dit_module import consolidate_checkpoint
from isa4d.modules.vae_module import LATENT_STATS_KEY
from isa4d.train import train
from isa4d.utils.checkpoint_io import SafeModelParallelStrategy
from test_vae_module import ClipDataModule, make_module, make_trainer, photo_clips, tiny_config
from toy_lightning import ToyDataModule, ToyModule

__all__ = ["dit_ckpt", "human_shards", "tiny_config", "vae_ckpt"]  # fixtures

CPU = [
    "trainer=cpu",
    "logger=csv",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.enable_model_summary=false",
]


class _Payload:
    """Unpickling this runs `os.system("touch <marker>")`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def no_weights_only_default(monkeypatch) -> None:
    """torch's own default is `weights_only=True`; this environment variable turns it off where the
    caller does not say `weights_only=True` explicitly."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def malicious_files(folder: Path, marker: Path) -> dict[str, Path]:
    """A plain pickle (torch's legacy format) and a torch zip checkpoint, each holding the payload."""
    payload = {"state_dict": {}, "hyper_parameters": {"vae": _Payload(marker), "dit": {}, "vae_ckpt": ""}}
    files = {"pickle": folder / "evil.pkl", "zip": folder / "evil.ckpt"}
    files["pickle"].write_bytes(pickle.dumps(payload))
    torch.save(payload, files["zip"])
    return files


def _resume(path: Path, tmp_path: Path) -> None:
    cfg = with_toy_task(compose_for_test("train_vae", tmp_path, CPU))
    with open_dict(cfg):
        cfg.ckpt_path = str(path)
    train(cfg)


LOADERS = {
    "read_checkpoint": lambda path, tmp_path: read_checkpoint(path),
    "load_vae": lambda path, tmp_path: load_vae(path),
    "load_dit_module": lambda path, tmp_path: load_dit_module(path),
    "dit_vae_ckpt": lambda path, tmp_path: DiTModule(DIT_CONFIG, str(path)),
    "resume": _resume,
}


@pytest.mark.usefixtures("no_weights_only_default")
@pytest.mark.parametrize("kind", ["pickle", "zip"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_malicious_pickle_never_runs(tmp_path, loader, kind):
    marker = tmp_path / "pwned"
    path = malicious_files(tmp_path, marker)[kind]
    with pytest.raises(CheckpointError) as error:
        LOADERS[loader](path, tmp_path)
    assert not marker.exists()
    refused = f"{path} holds the Python object posix.system, refused because loading it could run code"
    if kind == "zip":
        assert str(error.value).startswith(refused)
    else:  # torch's legacy format: refused for its global, or (mapped reads) as not a zip checkpoint
        damaged = f"{path} is not a PyTorch checkpoint, or is truncated or damaged"
        assert str(error.value).startswith(refused) or str(error.value) == damaged, error.value


@pytest.mark.usefixtures("no_weights_only_default")
def test_train_resumes_with_weights_only(tmp_path, monkeypatch):
    """Lightning's own load of the resume file (`trainer.fit(weights_only=True)`) refuses code too,
    even with the up-front check of `isa4d.train` out of the way."""
    marker = tmp_path / "pwned"
    path = malicious_files(tmp_path, marker)["zip"]
    monkeypatch.setattr(isa4d.train, "read_checkpoint", lambda *args, **kwargs: {})
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        _resume(path, tmp_path)
    assert not marker.exists()
    # Without `weights_only=True` the same fit runs the payload: the argument is what protects it.
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False)
    with pytest.raises(Exception):  # noqa: B017 - the payload returns 0, not a checkpoint dict
        trainer.fit(ToyModule(), ToyDataModule(), ckpt_path=path)
    assert marker.exists()


def _sharded_folder(folder: Path, entries: dict) -> Path:
    """A sharded checkpoint folder as `trainer=fsdp` writes it: `torch.distributed.checkpoint` files of
    `entries` (one process) and Lightning's `meta.pt`."""
    dcp.save(entries, checkpoint_id=folder)
    torch.save({"global_step": 3, "hyper_parameters": {"vae_ckpt": "vae.ckpt"}}, folder / "meta.pt")
    return folder


@pytest.mark.filterwarnings("ignore:torch.distributed is .*uninitialized:UserWarning")
def test_sharded_checkpoints_are_checked_before_torch_reads_them(tmp_path):
    """torch reads a folder's `.metadata` with plain pickle and its non-tensor entries with
    `weights_only=False`; `check_sharded_checkpoint` (used by `consolidate_checkpoint`, the resume of
    `isa4d.train` and the load of `trainer=fsdp`'s strategy) refuses a payload in either before that, and
    passes real folders."""
    weights = {"w": torch.arange(6.0).view(2, 3)}
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99), "params": [0]}]}
    good = _sharded_folder(tmp_path / "good", {"state_dict": weights, "optimizer_0": optimizer})
    assert check_sharded_checkpoint(good) == torch.load(good / "meta.pt", weights_only=True)
    consolidated = torch.load(consolidate_checkpoint(good, tmp_path / "one.ckpt"), weights_only=True)
    assert torch.equal(consolidated["state_dict"]["w"], weights["w"]) and consolidated["global_step"] == 3

    marker = tmp_path / "pwned"
    evil_metadata = Path(shutil.copytree(good, tmp_path / "evil_metadata"))
    (evil_metadata / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    evil_entry = _sharded_folder(tmp_path / "evil_entry", {"state_dict": weights, "note": _Payload(marker)})
    loaders = [
        check_sharded_checkpoint,
        lambda folder: consolidate_checkpoint(folder, tmp_path / "out.ckpt"),
        lambda folder: _resume(folder, tmp_path),
        SafeModelParallelStrategy().load_checkpoint,  # trainer=fsdp's own load, whoever resumes
    ]
    for folder, file in [(evil_metadata, ".metadata"), (evil_entry, "__0_0.distcp")]:
        refused = f"{folder / file} holds the Python object posix.system, refused because loading it"
        for load in loaders:
            with pytest.raises(CheckpointError, match="^" + re.escape(refused)):
                load(folder)
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()
    huge = (2**62).to_bytes(8, "little")  # length fields of damaged files: past memory, past any size
    for damaged in [
        os.urandom(256),
        b"\x80\x04\x8e" + huge,
        b"\x80\x04\x96" + huge,
        b"\x80\x04X\xff\xff\xff\x7f",
    ]:
        (evil_metadata / ".metadata").write_bytes(damaged)
        with pytest.raises(CheckpointError, match="metadata"):
            check_sharded_checkpoint(evil_metadata)
    with pytest.raises(CheckpointError, match="is not a sharded checkpoint folder"):
        check_sharded_checkpoint(tmp_path / "one.ckpt")
    with pytest.raises(MissingFileError, match="does not exist"):
        check_sharded_checkpoint(tmp_path / "absent")
    # torch's own reader runs the payload of a non-tensor entry: the check is what protects it.
    assert _load_state_dict_from_keys({"note"}, checkpoint_id=evil_entry) == {"note": 0}  # os.system's result
    assert marker.exists()


@pytest.mark.parametrize("loader", ["load_vae", "load_dit_module"])
def test_non_checkpoints_are_one_sentence(tmp_path, loader):
    real = tmp_path / "real.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, real)
    files = {
        "random.ckpt": os.urandom(4096),
        "notes.txt": b"not a checkpoint\n",
        "empty.ckpt": b"",
        "truncated.ckpt": real.read_bytes()[: real.stat().st_size // 2],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as error:
            LOADERS[loader](tmp_path / name, tmp_path)
        assert (
            str(error.value) == f"{tmp_path / name} is not a PyTorch checkpoint, or is truncated or damaged"
        )
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match=r"list\.ckpt holds a list, not a checkpoint dict$"):
        LOADERS[loader](tmp_path / "list.ckpt", tmp_path)
    with pytest.raises(MissingFileError, match=r"checkpoint .*absent\.ckpt does not exist"):
        LOADERS[loader](tmp_path / "absent.ckpt", tmp_path)


# ------------------------------------------------------------------------------------- real checkpoints


@pytest.fixture(scope="module")
def vae_lightning_ckpt(tiny_config, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """`last.ckpt` of a real stage-1 run (the `vae_tiny` config: EMA, discriminators, two optimisers,
    ModelCheckpoint and LatentStatistics state) after one batch, and the EMA weights it holds."""
    root = tmp_path_factory.mktemp("vae_run")
    module = make_module(tiny_config, **{"ema_decay": 0.9})
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, every_n_train_steps=2)
    callbacks = [LatentStatistics(max_batches=1), checkpoints]
    trainer = make_trainer(root, batches=1, callbacks=callbacks, enable_checkpointing=True)
    trainer.fit(module, ClipDataModule(photo_clips(1, frames=5, size=32), batch_size=1))
    ema = torch.cat([p.detach().flatten() for p in module.ema.module.parameters()])
    return root / "checkpoints" / "last.ckpt", ema


def test_real_vae_checkpoint_holds_only_safe_objects(vae_lightning_ckpt):
    path, ema = vae_lightning_ckpt
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    checkpoint = read_checkpoint(path, stage="vae")
    assert checkpoint["global_step"] == 2 and len(checkpoint["optimizer_states"]) == 2
    assert LATENT_STATS_KEY in checkpoint and any("ModelCheckpoint" in key for key in checkpoint["callbacks"])
    loaded = torch.cat([p.flatten() for p in load_vae(path).parameters()])
    assert torch.equal(loaded, ema)


def test_real_dit_checkpoint_and_wrong_stages(dit_ckpt, vae_ckpt, tmp_path):
    assert torch.serialization.get_unsafe_globals_in_checkpoint(dit_ckpt) == []
    module = load_dit_module(dit_ckpt)
    state = read_checkpoint(dit_ckpt, stage="dit")["state_dict"]
    assert all(torch.equal(value, state[f"dit.{name}"]) for name, value in module.dit.state_dict().items())

    dit_given = (
        f"{dit_ckpt} is a DiT checkpoint; give the VAE checkpoint (the one written by isa4d train-vae)"
    )
    vae_given = (
        f"{vae_ckpt} is a VAE checkpoint; give the DiT checkpoint (the one written by isa4d train-dit)"
    )
    for call, message in [
        (lambda: load_vae(dit_ckpt), dit_given),
        (lambda: DiTModule(DIT_CONFIG, str(dit_ckpt)), dit_given),  # model.vae_ckpt
        (lambda: load_dit_module(vae_ckpt), vae_given),
        (lambda: load_dit_module(dit_ckpt, vae_ckpt=dit_ckpt), dit_given),
    ]:
        with pytest.raises(CheckpointError) as error:
            call()
        assert str(error.value) == message
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(
        CheckpointError, match=r"weights\.pt is not a VAEModule checkpoint; give the VAE checkpoint"
    ):
        load_vae(plain)


def test_resume_of_the_other_stage_fails_before_building(vae_ckpt, tmp_path):
    cfg = compose_for_test("train_dit", tmp_path, ["experiment=dit_tiny_cpu", f"model.vae_ckpt={vae_ckpt}"])
    with open_dict(cfg):
        cfg.ckpt_path = str(vae_ckpt)
    with pytest.raises(CheckpointError, match=r"is a VAE checkpoint; give the DiT checkpoint"):
        train(cfg)
