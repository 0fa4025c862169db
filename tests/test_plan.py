"""`isa4d plan` (docs/plan.md): exact parameter, gradient and optimiser numbers against the real built
modules; activation estimates against what real forwards on the CPU keep for backward."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from dit_fixtures import vae_ckpt  # noqa: F401  (a fixture)
from isa4d.cli import main
from isa4d.config import compose
from isa4d.errors import ConfigError
from isa4d.models.dit import dit_tiny
from isa4d.plan import (
    PRECISIONS,
    build_plan,
    count_parameters,
    dit_activation_bytes,
    dit_embedding_widths,
    format_plan,
    saved_tensor_bytes,
    token_shapes,
    vae_activation_bytes,
)
from isa4d.plan import main as plan_main
from test_dit_modules import make_conditions, randomize

ROOT = Path(__file__).resolve().parents[1]
C, B, P, T, N, H, W = 16, 1, 2, 9, 32, 16, 16  # latent 16x16: an 8x8 patch grid, 3 latent frames


def _grad_and_state_bytes(
    module: torch.nn.Module, optimizers: list[torch.optim.Optimizer]
) -> tuple[int, int]:
    """Bytes of the gradients and of the per-value optimiser state (not the scalar step counters)."""
    grads = sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None)
    states = sum(
        value.numel() * value.element_size()
        for optimizer in optimizers
        for param, state in optimizer.state.items()
        for value in state.values()
        if torch.is_tensor(value) and value.shape == param.shape
    )
    return grads, states


def test_dit_parameters_gradients_and_optimizer_are_exact(vae_ckpt) -> None:  # noqa: F811
    cfg = compose(
        "plan",
        [
            "experiment=dit_tiny_cpu",
            f"model.vae_ckpt={vae_ckpt}",
            "model.ema_decay=0.999",
            "data.num_frames=9",
            "data.resolution=32",
            "strategies=[single]",
        ],
    )
    plan, (row,) = build_plan(cfg)
    torch.manual_seed(0)
    module = instantiate(cfg.model)  # the real DiTModule: DiT, EMA, frozen VAE of the checkpoint
    params = list(module.parameters())
    assert plan.count.trainable == sum(p.numel() for p in params if p.requires_grad)
    assert plan.count.frozen == sum(p.numel() for p in params if not p.requires_grad)
    assert plan.count.sharded_frozen == sum(p.numel() for p in module.ema.parameters())

    randomize(module.dit)
    cond = make_conditions(B=1, P=3, T=9, N=cfg.model.num_points, h=4, w=4)
    module.dit(torch.randn(1, C, 3, 4, 4), torch.rand(1), cond).square().mean().backward()
    assert all(p.grad is not None for p in params if p.requires_grad)
    optimizer = module.configure_optimizers()
    optimizer.step()
    assert (row["gradients"], row["optimizer"]) == _grad_and_state_bytes(module, [optimizer])
    assert row["trainable"] == 4 * plan.count.trainable
    assert row["frozen"] == 4 * plan.count.frozen + plan.count.buffers


def test_vae_parameters_gradients_and_optimizers_are_exact() -> None:
    cfg = compose("plan", ["experiment=vae_tiny_cpu", "model.ema_decay=0.999", "strategies=[single]"])
    plan, (row,) = build_plan(cfg)
    torch.manual_seed(0)
    module = instantiate(cfg.model)
    params = list(module.parameters())
    assert plan.count.trainable == sum(p.numel() for p in params if p.requires_grad)
    assert plan.count.frozen == sum(p.numel() for p in params if not p.requires_grad) > 0  # the EMA
    assert row["frozen"] == 4 * plan.count.frozen + sum(b.nbytes for b in module.buffers())

    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    posterior = module.vae.encode(x)
    z = posterior.sample()
    x_hat = module.vae.decode(z)
    step = module.loss.disc_start  # GAN terms on: every network gets gradients
    total, _ = module.loss(x, x_hat, posterior, step, z=z, last_layer=module.vae.last_layer)
    total.backward()
    module.loss.discriminator_loss(x, x_hat, step)[0].backward()
    assert all(p.grad is not None for p in params if p.requires_grad)
    optimizers = module.configure_optimizers()
    for optimizer in optimizers:
        optimizer.step()
    assert len(optimizers) == 2
    assert (row["gradients"], row["optimizer"]) == _grad_and_state_bytes(module, optimizers)


VARIANTS = {
    "isa": {},
    "joint": {"isa_mode": "joint"},
    "2d_only": {"branch_3d": False},
    "prefix": {"ref_mode": "prefix"},
    "controlnet": {"control": "controlnet", "control_video": "normal"},
    "no_qk_norm_ispe": {"qk_norm": False, "use_ispe": False, "image_encoder": None},
    "full_2d_attention": {"attention_2d": "full"},
    "points_every_4th_frame": {"point_frames_per_latent": 1},
}


def _tiny_forward(overrides: dict, precision: str, depth: int = 2):
    """A random tiny ISA-DiT, its forward at the test size under `precision`, and the planner's shapes."""
    torch.manual_seed(0)
    model = randomize(dit_tiny(hidden_size=64, depth=depth, num_heads=2, **overrides)).train()
    cond = make_conditions(B=B, P=P, T=T, N=N, h=H, w=W)
    if overrides.get("control"):
        cond = dataclasses.replace(cond, control_latent=torch.randn(B, C, 3, H, W))
    x, t = torch.randn(B, C, 3, H, W), torch.rand(B)
    autocast = PRECISIONS[precision].autocast
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def forward() -> torch.Tensor:
        with context:
            return model(x, t, cond)

    shapes = token_shapes(model, B, latents=3, frames=T, points=P * N, latent_hw=(H, W))
    return model, forward, shapes


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dit_activation_estimate_matches_the_saved_tensors(variant: str, precision: str) -> None:
    """The block formulas (+ autocast's weight copies) within 10 % of the bytes autograd saves for backward
    in a real forward (each storage once, parameters excluded)."""
    model, forward, shapes = _tiny_forward(VARIANTS[variant], precision)
    measured, _, _ = saved_tensor_bytes(forward, model.parameters())
    p = PRECISIONS[precision]
    estimate = dit_activation_bytes(model.config, shapes, p, False, dit_embedding_widths(model))["total"]
    if p.autocast:  # bf16 copies of the weights are saved too (the planner's `copies` column)
        estimate += count_parameters(model).cast * p.compute
    assert 0.9 < estimate / measured < 1.1, (estimate, measured)


@pytest.mark.parametrize("variant", ["isa", "2d_only"])
def test_dit_checkpointed_activations_match_what_the_forward_keeps(variant: str) -> None:
    """With gradient checkpointing: what a real forward leaves allocated (torch's MemTracker, category
    activations) within 30 % of the planner's resident part (the layers' inputs, embeddings, final layer;
    the image encoder's few activations are not modelled)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    model, forward, shapes = _tiny_forward(VARIANTS[variant], "32-true", depth=4)
    model.set_gradient_checkpointing(True)
    tracker = MemTracker()
    tracker.track_external(model)
    with warnings.catch_warnings(), tracker:
        warnings.simplefilter("ignore")
        output = forward()
        kept = tracker.get_tracker_snapshot("current")[torch.device("cpu")]
    measured = next(v for k, v in kept.items() if str(k).endswith("ACT"))
    estimate = dit_activation_bytes(
        model.config, shapes, PRECISIONS["32-true"], True, dit_embedding_widths(model)
    )
    assert output.requires_grad
    assert 0.7 < estimate["resident"] / measured < 1.3, (estimate["resident"], measured)
    assert estimate["with_checkpointing"] < 0.5 * estimate["without_checkpointing"]


def _tiny_vae_module(checkpointing: bool, device: str):
    cfg = compose("plan", ["experiment=vae_tiny_cpu", f"model.gradient_checkpointing={checkpointing}"])
    torch.manual_seed(0)
    with torch.device(device):
        return instantiate(cfg.model)


def test_vae_activation_estimate_on_meta_matches_a_real_forward() -> None:
    """The meta-device count equals the bytes a real CPU step saves (within 2 %), and with checkpointing
    its resident part is within 30 % of what a real checkpointed forward keeps (MemTracker)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    shape = (1, 3, 9, 32, 32)
    estimate = vae_activation_bytes(_tiny_vae_module(False, "meta"), torch.zeros(shape, device="meta"), False)
    real = _tiny_vae_module(False, "cpu")
    measured = vae_activation_bytes(real, torch.rand(shape) * 2 - 1, False)
    assert 0.98 < estimate["total"] / measured["total"] < 1.02, (estimate, measured)

    checkpointed = _tiny_vae_module(True, "cpu")
    checkpointed.loss.eval()
    tracker = MemTracker()
    tracker.track_external(checkpointed)
    x = torch.rand(shape) * 2 - 1
    with warnings.catch_warnings(), tracker:
        warnings.simplefilter("ignore")
        posterior = checkpointed.vae.encode(x)
        z = posterior.sample()
        total, _ = checkpointed.loss(
            x, checkpointed.vae.decode(z), posterior, checkpointed.loss.disc_start, z=z
        )
        kept = tracker.get_tracker_snapshot("current")[torch.device("cpu")]
    kept_bytes = next(v for k, v in kept.items() if str(k).endswith("ACT"))
    assert total.requires_grad
    assert 0.7 < estimate["resident"] / kept_bytes < 1.3, (estimate["resident"], kept_bytes)
    assert estimate["resident"] < estimate["without_checkpointing"]


def test_isa4d_plan_prints_and_writes_the_table(tmp_path, capsys) -> None:
    out = tmp_path / "plan.md"
    main(
        [
            "plan",
            "experiment=dit_tiny_cpu",
            "vae_model=tiny",
            "gpus=[4]",
            "strategies=[ddp,fsdp]",
            f"output={out}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left
    rows = [line.split("|")[1:-1] for line in printed.splitlines() if re.match(r"\| 4 \| \w+ \|", line)]
    total = {cells[1].strip(): float(cells[8].strip(" *")) for cells in rows}
    assert set(total) == {"ddp", "fsdp"} and 0 < total["fsdp"] <= total["ddp"]  # GiB, 2 decimals
    assert "Parameters:" in printed and "Activations per GPU:" in printed


def test_fsdp_shards_the_dit_and_ddp_replicates_it() -> None:
    cfg = compose(
        "plan", ["experiment=dit_tiny_cpu", "vae_model=tiny", "gpus=[1,4]", "strategies=[ddp,fsdp]"]
    )
    plan, rows = build_plan(cfg)
    by = {(r["strategy"], r["gpus"]): r for r in rows}
    for key in ("trainable", "gradients", "optimizer"):
        assert by["fsdp", 4][key] == pytest.approx(by["ddp", 4][key] / 4)
        assert by["ddp", 1][key] == by["ddp", 4][key]
    assert by["fsdp", 4]["activations"] == by["ddp", 4]["activations"] == plan.activation["total"]
    assert by["fsdp", 4]["total"] < by["ddp", 4]["total"]
    text = format_plan(plan, rows, None)
    assert text.count("\n| 4 |") == 2 and " fits " not in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategies=[zero3]"], "strategies=\\['zero3'\\]"),
        (["trainer.precision=64-true"], "trainer.precision='64-true'"),
        (["experiment=vae_tiny_cpu", "strategies=[fsdp]"], "VAE stage trains with DDP"),
        (["experiment=dit_tiny_cpu", "vae_model=huge"], "vae_model='huge'"),
        (
            ["experiment=dit_tiny_cpu", "vae_model=tiny", "model.optimizer._target_=torch.optim.LBFGS"],
            "LBFGS",
        ),
        (["experiment=dit_tiny_cpu", "vae_model=tiny", "data.num_frames=10"], "data.num_frames=10"),
        (["experiment=vae_tiny_cpu", "data.num_frames=10"], "data.num_frames=10"),
    ],
)
def test_plan_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_plan(compose("plan", overrides))


def test_plan_refuses_an_output_folder_before_building(tmp_path) -> None:
    cfg = compose("plan", ["experiment=dit_tiny_cpu", "vae_model=huge", f"output={tmp_path}"])
    with pytest.raises(ConfigError, match="output="):  # the output, not vae_model: checked first
        plan_main(cfg)


def test_docs_plan_holds_the_paper4b_table_the_command_prints() -> None:
    """docs/plan.md's table is what `isa4d plan` prints for paper4b on 8/16/64 GPUs (FSDP and DDP)."""
    cfg = compose(
        "plan", ["data.num_frames=97", "data.batch_size=1", "gpus=[8,16,64]", "strategies=[fsdp,ddp]"]
    )
    text = format_plan(*build_plan(cfg), cfg.gpu_memory_gib)
    docs = (ROOT / "docs" / "plan.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 8
    for line in [
        *table,
        *(line for line in text.splitlines() if line.startswith(("Parameters", "Activations"))),
    ]:
        assert line in docs, line
