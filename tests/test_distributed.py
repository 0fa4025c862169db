"""Distributed training on the CPU: two gloo processes per test, started as `torchrun` starts them.

* DDP, both stages: each rank reads its own data (its own validation shards, its own training stream)
  and the ranks end with identical weights and EMA;
* FSDP2 (`trainer=fsdp`: `ModelParallelStrategy`, `DiTModule.configure_model`): two training steps on two
  ranks equal the steps of one process on the same global batch (weights and EMA, float32); the EMA is
  sharded like the DiT, updated per shard and swapped in for validation; sharded, consolidated and full
  checkpoints round-trip; under `bf16-mixed` every parameter and buffer stays float32, and validation
  with `DiTSamples` runs the sharded DiT on both ranks; `VAEModule` refuses FSDP.

Not covered: GPUs and NCCL (`tests/test_gpu.py` runs DDP on 2 GPUs), several nodes, FSDP resume from a
one-file checkpoint (unsupported). Every test spawns two fresh Python processes (their imports alone take
seconds), hence `slow`; the FSDP tests share one run (`fsdp_run`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, model_parallel
from omegaconf import OmegaConf
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor, Shard
from torch.utils.data import DataLoader

from dit_fixtures import DIT_CONFIG, FRAMES, SIZE, datamodule, trainer, vae_ckpt
from isa4d.callbacks.dit import DiTSamples, take
from isa4d.config import compose
from isa4d.data import write_shards
from isa4d.data.datamodules import VideoDataModule
from isa4d.data.synth import generate_clip
from isa4d.diffusion import flow_matching_loss
from isa4d.errors import CheckpointError, ConfigError
from isa4d.models.dit import ISADiT
from isa4d.models.vae import vae_tiny
from isa4d.modules import EMA, DiTModule, VAEModule
from isa4d.modules.dit_module import consolidate_checkpoint, seeded_noise
from isa4d.utils.checkpoint_io import SafeModelParallelStrategy
from isa4d.utils.files import file_sha256

__all__ = ["vae_ckpt"]  # fixture

WORLD = 2
TIMEOUT_S = 85
TRAIN_CLIPS, VAL_CLIPS = 4, 2


# ---------------------------------------------------------------------------------------------- launching


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, port: int, worker: Callable[..., None], args: tuple[Any, ...]) -> None:
    """One rank: the environment `torchrun` gives (Lightning then launches nothing itself)."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": "0"}
    env.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(env)
    torch.set_num_threads(1)
    worker(rank, *args)


def run_ranks(worker: Callable[..., None], *args: Any) -> None:
    """Run `worker(rank, *args)` in `WORLD` spawned processes; fail on an error in any, or on a hang."""
    context = mp.start_processes(
        _rank_main, args=(_free_port(), worker, args), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(
                f"{worker.__name__}: the ranks did not finish within {TIMEOUT_S} s (a hung collective?)"
            )


def rank_results(out: Path) -> list[dict[str, Any]]:
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


def cpu_trainer(root: Path, max_steps: int, strategy: Any, **overrides: Any) -> L.Trainer:
    """`dit_fixtures.trainer` on `WORLD` CPU processes."""
    return trainer(
        root, max_steps, devices=WORLD, strategy=strategy, use_distributed_sampler=False, **overrides
    )


class KeyRecorder(L.Callback):
    """The clip keys of every training and validation batch this rank sees."""

    def __init__(self) -> None:
        self.keys: dict[str, list[str]] = {"train": [], "val": []}

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, *_: Any
    ) -> None:
        self.keys["train"] += batch["key"]

    def on_validation_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, *_: Any
    ) -> None:
        self.keys["val"] += batch["key"]


def repeat(batch: dict[str, Any], times: int) -> DataLoader:
    """A loader giving `batch` `times` times."""
    return DataLoader([batch] * times, batch_size=None)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """One clip per shard: 4 training shards, 2 validation shards (`val`), so each rank can own shards."""
    folder = tmp_path_factory.mktemp("shards")
    for split, count in (("train", TRAIN_CLIPS), ("val", VAL_CLIPS)):
        clips = [generate_clip(split, i, size=SIZE, frames=FRAMES, persons=1) for i in range(count)]
        write_shards(clips, folder, split, 1, 1e9, progress=False, preset="ultrafast")
    return folder


def _assert_data_split(results: list[dict[str, Any]]) -> None:
    """Validation: every clip once over the ranks; training: each rank its own share of the draws."""
    val = [set(r["keys"]["val"]) for r in results]
    assert all(len(keys) == len(r["keys"]["val"]) for keys, r in zip(val, results, strict=True))
    assert val[0].isdisjoint(val[1]) and len(val[0] | val[1]) == VAL_CLIPS and all(val)
    train = [r["keys"]["train"] for r in results]
    assert all(len(keys) == 2 for keys in train) and train[0] != train[1]
    assert all("-train-" in key for keys in train for key in keys)


def _assert_same_weights(results: list[dict[str, Any]], initial: dict[str, torch.Tensor]) -> None:
    first, second = (r["weights"] for r in results)
    assert first.keys() == second.keys() == initial.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)
    changed = [n for n in first if not torch.equal(first[n], initial[n])]
    assert any(n.startswith("ema.module.") for n in changed) and any(
        not n.startswith("ema.") for n in changed
    )


# ---------------------------------------------------------------------------------------------- DDP


def _ddp_dit_worker(rank: int, vae_path: Path, shards: Path, out: Path) -> None:
    torch.manual_seed(0)
    module = DiTModule(DIT_CONFIG, str(vae_path), num_points=64, ema_decay=0.5)
    recorder = KeyRecorder()
    data = datamodule(shards, val_splits=["val"], epoch_size=WORLD * 2)
    fit = cpu_trainer(out, 2, DDPStrategy(), callbacks=[recorder], limit_val_batches=1.0)
    fit.fit(module, datamodule=data)
    torch.save({"keys": recorder.keys, "weights": weights(module)}, out / f"rank{rank}.pt")


@pytest.mark.slow
def test_ddp_dit_ranks_read_their_own_data_and_end_with_identical_weights(tmp_path, vae_ckpt, shards):
    run_ranks(_ddp_dit_worker, vae_ckpt, shards, tmp_path)
    results = rank_results(tmp_path)
    _assert_data_split(results)
    torch.manual_seed(0)
    initial = weights(DiTModule(DIT_CONFIG, str(vae_ckpt), num_points=64, ema_decay=0.5))
    _assert_same_weights(results, initial)


def _vae_module(config: dict[str, Any]) -> VAEModule:
    torch.manual_seed(0)
    return instantiate(OmegaConf.create(config))


def _ddp_vae_worker(rank: int, config: dict[str, Any], shards: Path, out: Path) -> None:
    module = _vae_module(config)
    recorder = KeyRecorder()
    data = VideoDataModule(
        train_dirs=[str(shards)],
        val_dirs=[str(shards)],
        val_splits=["val"],
        num_frames=FRAMES,
        resolution=SIZE,
        batch_size=1,
        num_workers=0,
        epoch_size=WORLD * 2,
        crop=None,
        image_prob=0.0,
    )
    strategy = DDPStrategy(find_unused_parameters=True)  # VAEModule's two backward passes need it
    fit = cpu_trainer(
        out, 4, strategy, callbacks=[recorder], limit_val_batches=1.0
    )  # 2 optimiser steps a batch
    fit.fit(module, datamodule=data)
    torch.save({"keys": recorder.keys, "weights": weights(module)}, out / f"rank{rank}.pt")


@pytest.mark.slow
def test_ddp_vae_ranks_read_their_own_data_and_end_with_identical_weights(tmp_path, shards):
    overrides = ["model=vae_tiny", "model.ema_decay=0.5", "model.loss.disc_start=0"]
    config = OmegaConf.to_container(compose("train_vae", overrides).model, resolve=True)
    run_ranks(_ddp_vae_worker, config, shards, tmp_path)
    results = rank_results(tmp_path)
    _assert_data_split(results)
    initial = weights(_vae_module(config))
    _assert_same_weights(results, initial)
    assert any(
        not torch.equal(results[0]["weights"][n], initial[n]) for n in initial if n.startswith("loss.")
    )


# ---------------------------------------------------------------------------------------------- FSDP


class FixedStepDiT(DiTModule):
    """`DiTModule` whose training step has no randomness: time 0.5, noise seeded by each clip's key, no
    condition dropout or window; so a step of two ranks on one sample each can equal a step of one
    process on both."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0, cond = self.builder(batch)
        t = torch.full((x0.shape[0],), 0.5)
        return flow_matching_loss(
            self.dit, x0, cond, t=t, noise=seeded_noise(batch["key"], x0.shape[1:], x0.device)
        )


def fixed_step_module(vae_path: Path, seed: int = 0) -> FixedStepDiT:
    """Every DiT weight perturbed (no zero-initialised output or gates), so that every parameter gets a
    gradient in the first step. SGD with momentum: its update is linear in the gradient, so two runs agree
    to float rounding (Adam divides each gradient by its running size, which magnifies the rounding of
    near-zero gradients to ~0.5 % of a step)."""
    torch.manual_seed(seed)
    dit = ISADiT.from_config(DIT_CONFIG)
    with torch.no_grad():
        for parameter in dit.parameters():
            parameter.add_(torch.randn_like(parameter), alpha=0.05)
    optimizer = partial(torch.optim.SGD, lr=0.5, momentum=0.9)
    return FixedStepDiT(dit, str(vae_path), num_points=64, ema_decay=0.5, optimizer=optimizer)


def full_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The gathered (unsharded) state dict on rank 0 (the others get the replicated entries only)."""
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _shard_layout(module: DiTModule) -> dict[str, int]:
    """Checks every DiT parameter and its EMA are sharded alike (dim 0); counts this rank's elements."""
    averages = dict(module.ema.module.named_parameters())
    local = 0
    for name, parameter in module.dit.named_parameters():
        average = averages[name]
        assert isinstance(parameter, DTensor) and parameter.placements == (Shard(0),), name
        assert isinstance(average, DTensor) and average.placements == parameter.placements, name
        assert average.to_local().shape == parameter.to_local().shape, name
        local += parameter.to_local().numel()
    return {"local": local, "total": sum(p.numel() for p in module.dit.parameters())}


def _folder_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint folder, by name."""
    return {path.name: file_sha256(path) for path in sorted(folder.iterdir())}


def _names(folder: Path, name: str) -> list[str]:
    """The entries of `folder` whose name contains `name` (a checkpoint and what its saves leave)."""
    return sorted(path.name for path in folder.iterdir() if name in path.name)


def _fsdp_worker(rank: int, vae_path: Path, batch: dict[str, Any], out: Path) -> None:
    local = take(batch, rank)  # the global batch: sample `rank` on this rank
    module = fixed_step_module(vae_path)
    fit = cpu_trainer(out, 2, SafeModelParallelStrategy(), limit_val_batches=0)
    fit.fit(module, train_dataloaders=repeat(local, 2))
    layout = _shard_layout(module)
    with module.ema_scope():
        ema_losses = module.fixed_time_losses(local)
    live_losses = module.fixed_time_losses(local)
    fit.save_checkpoint(out / "sharded.ckpt")  # a folder: one file per rank (torch.distributed.checkpoint)
    saved = _folder_digest(out / "sharded.ckpt")

    # A save that fails while the shards are written leaves the folder above as it was; the next save
    # replaces it and leaves nothing else behind.
    def half_written(state: dict, path: Path) -> None:  # this rank's shard file begun, then the disk is full
        (Path(path) / f"__{rank}_0.distcp").write_bytes(b"half")
        raise OSError("disk full")

    with mock.patch.object(model_parallel, "_distributed_checkpoint_save", half_written):
        with contextlib.suppress(OSError):
            fit.save_checkpoint(out / "sharded.ckpt")
    fit.strategy.barrier()
    interrupted = {
        "kept": _folder_digest(out / "sharded.ckpt") == saved,
        "names": _names(out, "sharded.ckpt"),
    }
    fit.save_checkpoint(out / "sharded.ckpt")
    leftovers = _names(out, "sharded.ckpt")
    fit.strategy._save_distributed_checkpoint = False  # the same strategy, writing one gathered file
    fit.save_checkpoint(out / "full.ckpt")
    trained = full_state(module)

    # A save killed between its two renames: no sharded.ckpt, the previous folder as .sharded.ckpt.old.
    if rank == 0:
        (out / "sharded.ckpt").rename(out / ".sharded.ckpt.old")
    fit.strategy.barrier()
    reloaded = fixed_step_module(vae_path, seed=1)  # other weights, overwritten by the checkpoint
    resume = cpu_trainer(out, 2, SafeModelParallelStrategy(), limit_val_batches=0)  # restored at step 2
    resume.fit(reloaded, repeat(local, 2), ckpt_path=out / "sharded.ckpt", weights_only=True)
    restored = _names(out, "sharded.ckpt")

    # A bf16-mixed step, then validation (EMA swapped in) with sample videos: the sharded DiT runs on
    # every rank, rank 0 writes. Parameters and buffers stay float32.
    mixed = fixed_step_module(vae_path)
    samples = DiTSamples(num_samples=1, num_steps=1, guidance_scale=1.0, dirpath=out / "samples")
    mixed_fit = cpu_trainer(out, 1, ModelParallelStrategy(), precision="bf16-mixed", callbacks=[samples])
    mixed_fit.fit(mixed, repeat(local, 1), repeat(local, 1))
    dtypes = {name: t.dtype for name, t in (*mixed.named_parameters(), *mixed.named_buffers())}
    result = {
        "layout": layout,
        "losses": {"ema": ema_losses, "live": live_losses},
        "trained": trained,
        "reloaded": full_state(reloaded),
        "resumed_step": resume.global_step,
        "interrupted": interrupted,
        "leftovers": leftovers,
        "restored": restored,
        "dtypes": {name: str(dtype) for name, dtype in dtypes.items()},
        "val_loss": float(mixed_fit.callback_metrics["val/flow_loss"]),
        "samples": str(samples.last_path),
    }
    try:
        cpu_trainer(out, 1, ModelParallelStrategy()).fit(VAEModule(vae_tiny()), repeat(local, 1))
    except ConfigError as error:
        result["vae_error"] = str(error)
    torch.save(result, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, vae_ckpt, shards) -> dict[str, Any]:
    """Two FSDP training steps on two ranks (one sample each), and the same two steps in this process on
    the global batch of both samples."""
    data = datamodule(shards, val_splits=["val"], val_batch_size=WORLD)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert len(batch["key"]) == WORLD
    out = tmp_path_factory.mktemp("fsdp")
    run_ranks(_fsdp_worker, vae_ckpt, batch, out)

    reference = fixed_step_module(vae_ckpt)
    optimizer = reference.configure_optimizers()
    for _ in range(2):  # Lightning's automatic optimisation, then the EMA update of on_train_batch_end
        optimizer.zero_grad()
        reference.training_step(batch, 0).backward()
        optimizer.step()
        reference.on_train_batch_end(None, batch, 0)
    losses = []
    for rank in range(WORLD):
        with reference.ema_scope():
            ema = reference.fixed_time_losses(take(batch, rank))
        losses.append({"ema": ema, "live": reference.fixed_time_losses(take(batch, rank))})
    ranks = rank_results(out)
    return {
        "out": out,
        "ranks": ranks,
        "reference": weights(reference),
        "losses": losses,
        "vae_ckpt": vae_ckpt,
    }


@pytest.mark.slow
def test_fsdp_step_equals_the_single_process_step(fsdp_run):
    """DiT weights and EMA after two steps (momentum, EMA warm-up) on 2 ranks = on 1 process, float32."""
    reference, trained = fsdp_run["reference"], fsdp_run["ranks"][0]["trained"]
    initial = weights(fixed_step_module(fsdp_run["vae_ckpt"]))
    learned = [n for n in reference if n.startswith(("dit.", "ema.module.")) and ".null_" not in n]
    assert all(not torch.equal(reference[n], initial[n]) for n in learned)  # (null tokens: no drops here)
    assert trained.keys() == reference.keys() and not any(k.startswith("builder.vae.") for k in trained)
    for name, value in reference.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_fsdp_shards_the_ema_like_the_dit_and_swaps_it_in(fsdp_run):
    """Each rank holds half of the DiT and the same half of its EMA; validation inside `ema_scope` sees the
    EMA weights, and the live weights are back after it (the flow losses of one process on each sample)."""
    layouts = [result["layout"] for result in fsdp_run["ranks"]]
    total = layouts[0]["total"]
    assert sum(layout["local"] for layout in layouts) == total
    assert all(abs(layout["local"] - total / WORLD) < 0.05 * total for layout in layouts)
    for result, expected in zip(fsdp_run["ranks"], fsdp_run["losses"], strict=True):
        assert not torch.allclose(expected["ema"], expected["live"])  # the two weight sets differ
        for kind in ("ema", "live"):
            torch.testing.assert_close(result["losses"][kind], expected[kind], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fsdp_checkpoints_round_trip(fsdp_run, tmp_path):
    """A sharded checkpoint (a folder) restores every shard of the DiT, the EMA and the step when an FSDP
    run resumes from it, and consolidates into one file; the full checkpoint (one file gathered on rank 0)
    loads in one process. All hold the trained weights exactly."""
    assert all(result["resumed_step"] == 2 for result in fsdp_run["ranks"])
    for result in fsdp_run["ranks"]:  # SafeModelParallelStrategy (conf/trainer/fsdp.yaml)
        assert result["interrupted"] == {"kept": True, "names": [".sharded.ckpt.partial", "sharded.ckpt"]}
        assert result["leftovers"] == ["sharded.ckpt"]
        assert result["restored"] == ["sharded.ckpt"]  # put back from .sharded.ckpt.old by the resume
    trained, reloaded = fsdp_run["ranks"][0]["trained"], fsdp_run["ranks"][0]["reloaded"]
    assert reloaded.keys() == trained.keys()
    for name, value in trained.items():
        assert torch.equal(reloaded[name], value), name
    sharded, full = fsdp_run["out"] / "sharded.ckpt", fsdp_run["out"] / "full.ckpt"
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == WORLD and full.is_file()
    consolidated = consolidate_checkpoint(sharded, tmp_path / "consolidated.ckpt")
    for path in (full, consolidated):
        module = DiTModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        assert int(module.ema.num_updates) == 2
        state = weights(module)
        assert state.keys() == trained.keys()
        for name, value in state.items():
            assert torch.equal(value, trained[name]), name
    with pytest.raises(CheckpointError, match="is not a sharded checkpoint folder"):
        consolidate_checkpoint(full, tmp_path / "again.ckpt")


@pytest.mark.slow
def test_fsdp_bf16_mixed_validates_samples_and_keeps_float32_weights(fsdp_run):
    """`trainer=fsdp`'s precision: autocast compute; no parameter or buffer (frozen VAE, body model, point
    sampler, DiT) is cast, unlike FSDP1's mixed-precision buffer dtype. Validation and `DiTSamples` run
    the sharded DiT on both ranks (the same clip), rank 0 writes the video."""
    ranks = fsdp_run["ranks"]
    assert ranks[0]["samples"] == ranks[1]["samples"] and Path(ranks[0]["samples"]).is_file()
    assert len(list(Path(ranks[0]["samples"]).parent.iterdir())) == 1
    assert all(0 < result["val_loss"] < 10 for result in ranks)
    dtypes = ranks[0]["dtypes"]
    assert any(name.startswith("builder.vae.") for name in dtypes)
    assert any(name.startswith("builder.body.") for name in dtypes)
    floating = {name: dtype for name, dtype in dtypes.items() if "float" in dtype or "bfloat" in dtype}
    assert floating and set(floating.values()) == {"torch.float32"}


@pytest.mark.slow
def test_vae_module_refuses_fsdp(fsdp_run):
    """The VAE fits one GPU: under `trainer=fsdp` VAEModule stops before training with one clear sentence."""
    for result in fsdp_run["ranks"]:
        assert result["vae_error"].startswith("VAEModule does not support trainer=fsdp")


def test_ema_of_another_layout_fails_clearly():
    """An EMA whose copy does not match the model's parameters (e.g. not sharded like them) raises one
    sentence naming the parameter and the fix, instead of a size mismatch deep in `lerp_`."""
    ema = EMA(torch.nn.Linear(4, 2), decay=0.9)
    ema.shard_like(torch.nn.Linear(4, 2))  # nothing sharded: a no-op
    with pytest.raises(
        ValueError, match=r"EMA copy of 'weight' .* \(2, 4\) and \(3, 4\)\): call EMA.shard_like"
    ):
        ema.update(torch.nn.Linear(4, 3))
    assert int(ema.num_updates) == 0
