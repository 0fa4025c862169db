"""GPU checks (marker `gpu`, skipped without CUDA; scripts/gpu_check.sh runs them on a GPU machine):
bf16-mixed training steps of both stages, xformers against SDPA, DDP over two GPUs. The CPU tests at the
end check the pieces the GPU check relies on: the bf16 benchmark options and the script's refusal without
a GPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from dit_fixtures import FRAMES, SIZE, datamodule, dit_module, human_shards, trainer, vae_ckpt
from isa4d.bench import steps
from isa4d.config import compose
from isa4d.models.dit import attention, dit_tiny, xformers_available
from test_distributed import run_ranks, shards
from test_dit_modules import make_conditions, randomize

__all__ = ["human_shards", "shards", "vae_ckpt"]  # fixtures

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
GPUS = torch.cuda.device_count() if CUDA else 0


def gpu(test: Any) -> Any:
    """Mark a test `gpu` and skip it without a CUDA GPU."""
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")(test))


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().float().cpu().clone() for name, value in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> list[str]:
    return [n for n in before if n.startswith(prefix) and not torch.equal(before[n], after[n])]


class ParameterKinds(L.Callback):
    """Records the (dtype, device type) of every DiT parameter after each training batch."""

    def __init__(self) -> None:
        self.kinds: set[tuple[torch.dtype, str]] = set()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self.kinds |= {(p.dtype, p.device.type) for p in module.dit.parameters()}


@gpu
def test_dit_bf16_mixed_steps_on_cuda(tmp_path, human_shards, vae_ckpt) -> None:
    module = dit_module(vae_ckpt, ema_decay=0.5)
    before = _weights(module)
    seen = ParameterKinds()
    fit = trainer(tmp_path, 3, accelerator="gpu", devices=1, precision="bf16-mixed", callbacks=[seen])
    fit.fit(module, datamodule=datamodule(human_shards))
    loss = fit.callback_metrics["train/loss"]
    assert torch.isfinite(loss) and loss > 0
    after = _weights(module)
    assert _changed(before, after, "dit.") and _changed(before, after, "ema.")
    # During training (Lightning's teardown moves the module back to the CPU): fp32 weights on the GPU,
    # i.e. mixed precision, not bf16-true.
    assert seen.kinds == {(torch.float32, "cuda")}


@gpu
def test_vae_bf16_mixed_steps_on_cuda(tmp_path) -> None:
    cfg = compose("train_vae", ["model=vae_tiny", "model.loss.disc_start=1", "model.shortcut_init_batches=0"])
    torch.manual_seed(0)
    module = instantiate(cfg.model)
    before = _weights(module)
    videos = [{"video": torch.rand(1, 3, FRAMES, SIZE, SIZE) * 2 - 1} for _ in range(2)]
    fit = trainer(tmp_path, 4, accelerator="gpu", devices=1, precision="bf16-mixed", limit_val_batches=0)
    fit.fit(module, train_dataloaders=DataLoader(videos, batch_size=None))
    assert module.batch_step == 2  # batch 0 without, batch 1 with the GAN terms and discriminator step
    assert torch.isfinite(fit.callback_metrics["train/loss"])
    after = _weights(module)
    assert _changed(before, after, "vae.") and _changed(before, after, "loss.disc_2d.")


@gpu
@pytest.mark.skipif(not xformers_available(), reason="xformers is not installed")
def test_xformers_equals_sdpa_on_cuda() -> None:
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(2, 4, 256, 64, device="cuda", generator=generator, dtype=torch.bfloat16) for _ in "qkv"
    )
    torch.testing.assert_close(
        attention(q, k, v, backend="xformers"), attention(q, k, v), atol=2e-2, rtol=2e-2
    )

    torch.manual_seed(0)
    model = randomize(dit_tiny()).cuda().eval()
    cond = make_conditions(B=1, N=16, h=8, w=8).to("cuda")
    x = torch.randn(1, 16, 3, 8, 8, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        sdpa = model(x, 0.5, cond)
        model.set_attention_backend("xformers")
        xformers = model(x, 0.5, cond)
    assert sdpa.abs().max() > 0
    torch.testing.assert_close(xformers, sdpa, atol=3e-2, rtol=3e-2)


def _ddp_gpu_worker(rank: int, vae_path: Path, shards: Path, out: Path) -> None:
    """test_distributed's DDP DiT worker on GPU `rank` (NCCL), in bf16-mixed."""
    torch.cuda.set_device(rank)
    module = dit_module(vae_path, ema_decay=0.5)
    fit = trainer(
        out,
        2,
        accelerator="gpu",
        devices=2,
        strategy=DDPStrategy(),
        precision="bf16-mixed",
        use_distributed_sampler=False,
        limit_val_batches=1.0,
    )
    fit.fit(module, datamodule=datamodule(shards, val_splits=["val"], epoch_size=4))
    torch.save(_weights(module), out / f"rank{rank}.pt")


@gpu
@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
def test_ddp_on_two_gpus_keeps_the_ranks_identical(tmp_path, shards, vae_ckpt) -> None:
    run_ranks(_ddp_gpu_worker, vae_ckpt, shards, tmp_path)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    initial = _weights(dit_module(vae_ckpt, ema_decay=0.5))
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)
    assert _changed(initial, first, "dit.") and _changed(initial, first, "ema.")


# ---------------------------------------------------------------------------------------------- CPU


def test_bench_measures_the_bf16_matmul_peak() -> None:
    peak = steps.matmul_peak(size=128, repeats=2, dtype=torch.bfloat16)
    assert peak["dtype"] == "bfloat16" and peak["flops"] == 2 * 128**3 and peak["peak_flops_per_s"] > 0
    assert steps.matmul_peak(size=64, repeats=1)["dtype"] == "float32"


def test_bench_runs_bf16_mixed_steps_under_autocast() -> None:
    assert steps.parse_args(["--precision", "bf16-mixed"]).precision == "bf16-mixed"
    assert steps.parse_args([]).precision == "32-true"
    with steps.forward_context("bf16-mixed", torch.device("cpu"))():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with steps.forward_context("32-true", torch.device("cpu"))():
        assert not torch.is_autocast_enabled("cpu")


def test_gpu_check_fails_clearly_without_a_gpu(tmp_path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_OUT": str(tmp_path / "bench")}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gpu_check: no CUDA GPU visible") and "CUDA_VISIBLE_DEVICES=''" in line
    assert not (tmp_path / "bench").exists()  # nothing ran
