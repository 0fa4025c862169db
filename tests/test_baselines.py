"""Ablation variants (SPEC §3) as swappable config: `+variant=<name>` on the DiT model config."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import open_dict

from conftest import compose_for_test
from dit_fixtures import datamodule, human_shards, vae_ckpt
from isa4d.body import load_body_model
from isa4d.config import config_dir
from isa4d.diffusion import flow_matching_loss, sample_long
from isa4d.geometry import intrinsics_from_fov, look_at, pixel_grid
from isa4d.models.dit import ISADiT
from isa4d.render import part_colors, render_body_video, render_meshes
from test_dit_modules import make_conditions, randomize

__all__ = ["human_shards", "vae_ckpt"]  # fixtures

VARIANTS = sorted(path.stem for path in (config_dir() / "variant").glob("*.yaml"))
NO_3D = {"branch_3d": False}
EXPECTED_CHANGES = {  # what each variant changes in the `isa` network config
    "isa": {},
    "isa_no_pe": {"use_ispe": False},
    "isa_joint": {"isa_mode": "joint"},
    "isa_xavier": {"isa_init": "xavier"},
    "isa_no_null": {"isa_null_key": False},
    "controlnet_normal": {**NO_3D, "control": "controlnet", "control_video": "normal"},
    "padaln_pose": {**NO_3D, "control": "padaln", "control_video": "body"},
    "concat_render": {**NO_3D, "control": "concat", "control_video": "body"},
    "prefix_ref": {"ref_mode": "prefix"},
}
CONTROL_PARAMETERS = {  # the zero-initialised control path of each control variant (parameter prefixes)
    "controlnet_normal": ("control_embedder.", "controlnet_proj."),
    "padaln_pose": ("control_adaln.",),
    "concat_render": ("x_embedder.",),
}
B, T, N, LATENT = 1, 9, 16, 4  # conditions of the network tests: 9 frames -> 3 latent frames of 4x4


def variant_config(tmp_path, variant: str):
    return compose_for_test("train_dit", tmp_path, ["experiment=dit_tiny_cpu", f"+variant={variant}"])


def dit_of(tmp_path, variant: str) -> ISADiT:
    cfg = variant_config(tmp_path, variant)
    torch.manual_seed(0)
    return instantiate(cfg.model.dit)


def conditions(seed: int = 0):
    """`make_conditions` with a random control latent."""
    cond = make_conditions(B=B, P=1, T=T, N=N, h=LATENT, w=LATENT, seed=seed)
    control = torch.randn(cond.background_latent.shape, generator=torch.Generator().manual_seed(seed + 1))
    return dataclasses.replace(cond, control_latent=control)


def noisy_latent(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, 16, (T + 3) // 4, LATENT, LATENT, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_composes_and_builds(tmp_path, variant):
    isa = dit_of(tmp_path, "isa").config
    config = dit_of(tmp_path, variant).config
    assert {key: value for key, value in config.items() if isa[key] != value} == EXPECTED_CHANGES[variant]


@pytest.fixture(scope="module")
def batch(human_shards):
    module = datamodule(human_shards)
    module.setup("fit")
    return next(iter(module.val_dataloader()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_takes_a_training_step(tmp_path, vae_ckpt, batch, variant):
    """One DiTModule step on a real batch (control videos rendered and encoded in the data path); with
    the zero-initialised gates made non-zero, every parameter of the network gets a gradient."""
    cfg = variant_config(tmp_path, variant)
    with open_dict(cfg):
        cfg.model.vae_ckpt = str(vae_ckpt)
        cfg.model.num_points = 32
        cfg.model.p_drop_background = 0.0
        cfg.model.flow.update(p_drop_ref=0.0, p_drop_smpl=0.0, p_drop_camera=0.0, p_drop_all=0.0)
        cfg.model.window_latents = None  # the fixture's clips (3 latent frames) are shorter than the window
    torch.manual_seed(0)
    module = instantiate(cfg.model)
    randomize(module.dit)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    unused = {"null_camera", "null_identity"}  # used only when a condition is dropped
    missing = [
        name
        for name, p in module.dit.named_parameters()
        if name not in unused and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing
    # What the builder renders (the step validated the control latent's shape; nothing for the ISA models).
    assert module.builder.control_video == EXPECTED_CHANGES[variant].get("control_video")


@pytest.mark.parametrize("variant", sorted(CONTROL_PARAMETERS))
def test_zero_initialised_control_starts_as_the_network_without_it(tmp_path, variant):
    """A fresh control variant (other weights random) equals the same network without the control input
    (`control=None`, shared weights); once its control path is non-zero, the control video matters and
    `drop_smpl` removes it."""
    model = dit_of(tmp_path, variant).eval()
    if variant == "controlnet_normal":  # the copy starts as the first layer
        torch.testing.assert_close(model.controlnet[0].state_dict(), model.layers[0].state_dict())
    prefixes = CONTROL_PARAMETERS[variant]
    fresh = {name: p.clone() for name, p in model.state_dict().items() if name.startswith(prefixes)}
    randomize(model)
    model.load_state_dict(fresh, strict=False)
    plain = ISADiT.from_config({**model.config, "control": None, "control_video": None}).eval()
    state = model.state_dict()
    if variant == "concat_render":  # drop the control channels' columns, ordered (p1 p2 c)
        weight = state["x_embedder.proj.weight"]
        state["x_embedder.proj.weight"] = weight.view(weight.shape[0], 2, 2, -1)[..., :-16].flatten(1)
    plain.load_state_dict({name: state[name] for name in plain.state_dict()})
    cond, x = conditions(), noisy_latent()
    t = torch.full((B,), 0.6)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, cond), plain(x, t, cond))
        for name, p in model.named_parameters():
            if name.startswith(prefixes):
                p.add_(0.05 * torch.randn_like(p))
        v = model(x, t, cond)
        assert not torch.allclose(v, plain(x, t, cond), atol=1e-4)
        zero = dataclasses.replace(cond, control_latent=torch.zeros_like(cond.control_latent))
        torch.testing.assert_close(model(x, t, cond.with_drops(smpl=True)), model(x, t, zero))
        with pytest.raises(ValueError, match="control_latent"):
            model(x, t, dataclasses.replace(cond, control_latent=None))


def test_prefix_ref_drops_the_prefix_and_keeps_frames_aligned(tmp_path):
    """The prefix frame is internal: the output and the loss have the video's T' frames. With the temporal
    blocks switched off (each latent frame on its own), a change to the bodies or the camera of video
    frames 5-8 changes latent frame 2 alone, and of frame 0 latent frame 0 alone: the prefix frame takes
    no video frame's place. The reference is not on the input channels but reaches the output through the
    prefix (with the pixel-aligned 3-D reference features off)."""
    model = randomize(dit_of(tmp_path, "prefix_ref")).eval()
    assert model.x_embedder.proj.in_features == 4 * 2 * 16  # [noisy ; background] patches
    cond, x = conditions(), noisy_latent()
    t = torch.full((B,), 0.6)
    noise = torch.randn_like(x)
    with torch.no_grad():
        v = model(x, t, cond)
        assert v.shape == x.shape
        loss = flow_matching_loss(model, x, cond, t=t, noise=noise)
        x_t = (1 - 0.6) * x + 0.6 * noise
        torch.testing.assert_close(loss, F.mse_loss(model(x_t, t, cond), noise - x))
        for parameter in model.ref_sampler.parameters():
            parameter.zero_()
        other_ref = dataclasses.replace(cond, ref_latent=torch.randn_like(cond.ref_latent))
        assert not torch.allclose(model(x, t, other_ref), model(x, t, cond))
        for layer in model.layers:
            for block in layer.temporal, layer.point_temporal:
                torch.nn.init.zeros_(block.adaLN_modulation.linear.weight)
                torch.nn.init.zeros_(block.adaLN_modulation.linear.bias)
        v = model(x, t, cond)
        moved = cond.points.clone()
        moved[:, :, 5:9] += 0.1
        changed = (model(x, t, dataclasses.replace(cond, points=moved)) - v).abs().amax(dim=(0, 1, 3, 4))
        assert changed[2] > 0 and changed[:2].abs().max() == 0
        turned = cond.R.clone()
        turned[:, 0] = turned[:, 0] @ torch.linalg.matrix_exp(
            torch.tensor([[0, -0.1, 0], [0.1, 0, 0], [0, 0, 0]])
        )
        changed = (model(x, t, dataclasses.replace(cond, R=turned)) - v).abs().amax(dim=(0, 1, 3, 4))
        assert changed[0] > 0 and changed[1:].abs().max() == 0


@pytest.mark.parametrize("variant", ["controlnet_normal", "prefix_ref"])
def test_variants_sample_long_videos_in_windows(tmp_path, variant):
    """Generation: windows cut the control latent with the video (`slice_conditions`), a window not at
    the start of the video puts the prefix in front of four-frame latent frames."""
    model = randomize(dit_of(tmp_path, variant)).eval()
    cond = make_conditions(B=1, P=1, T=17, N=N, h=4, w=4)
    control = torch.randn(cond.background_latent.shape)
    cond = dataclasses.replace(cond, control_latent=control)
    noise = torch.randn(1, 16, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # windows: latent frames [0, 3), [2, 5)
        z = sample_long(
            model, noise, cond, window_frames=12, overlap_frames=4, num_steps=1, guidance_scale=1.0
        )
    assert z.shape == noise.shape and z.isfinite().all()


def test_control_video_of_a_batch_covers_the_person(vae_ckpt, batch, tmp_path):
    """The ConditionBuilder renders the batch's bodies with the batch's cameras: the synthetic clip's
    person mask lies inside the normal-map silhouette (which also shows what the room occludes)."""
    cfg = variant_config(tmp_path, "controlnet_normal")
    with open_dict(cfg):
        cfg.model.vae_ckpt = str(vae_ckpt)
    builder = instantiate(cfg.model).builder
    body, _ = builder.posed_body(batch["smpl"])
    video = builder.render_control(
        body.vertices, batch["person_mask"], batch["K"], batch["R"], batch["t"], batch["video"].shape[-2:]
    )
    assert video.shape == batch["video"].shape and video.min() >= -1 and video.max() <= 1
    rendered, person = (video[0] > -1).any(dim=0), batch["mask"][0] == 1
    assert (rendered & person).sum() / person.sum() > 0.95 and rendered.float().mean() < 0.3


def test_render_body_video_normals_face_the_camera():
    """Normal maps: (1 - n) / 2 colours of unit camera-space normals (OpenCV: z forward) turned towards the
    camera (n · ray < 0 at every visible pixel, so mostly n_z < 0), 0 for background; part colours."""
    body = load_body_model("procedural")
    pose = torch.zeros(1, 2, 69)
    pose[0, 1, :6] = torch.tensor([0.5, 0.0, 0.0, -0.5, 0.0, 0.0])  # the hips bend in frame 1
    vertices = body(torch.zeros(1, 2, 3), pose).vertices[0]  # (2, V, 3)
    size = (48, 32)
    K = intrinsics_from_fov(40.0, size, torch.float64)
    R, t = look_at(torch.tensor([0.4, 0.5, 3.0], dtype=K.dtype), torch.zeros(3, dtype=K.dtype))
    cameras = K.expand(2, 3, 3), R.expand(2, 3, 3), t.expand(2, 3)
    normal = render_body_video([vertices], body.faces, *cameras, size, "normal")
    colors = part_colors(body.lbs_weights)
    shaded = render_body_video([vertices], body.faces, *cameras, size, "body", colors)
    assert normal.shape == shaded.shape == (2, *size, 3) and normal.dtype == np.float32
    uv = pixel_grid(*size, dtype=K.dtype).reshape(*size, 2)
    rays = (torch.cat([uv, torch.ones(*size, 1, dtype=K.dtype)], dim=-1) @ torch.linalg.inv(K).T).numpy()
    for frame in range(2):
        mask = render_meshes([(vertices[frame], body.faces)], [colors], K, R, t, size)["mask"] >= 0
        assert 0.05 < mask.mean() < 0.5
        n = 1 - 2 * normal[frame][mask]
        np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
        assert ((n * rays[mask]).sum(-1) < 0).mean() > 0.98 and n[:, 2].mean() < -0.5
        assert not normal[frame][~mask].any() and not shaded[frame][~mask].any()
        assert len(np.unique(shaded[frame][mask].round(2), axis=0)) > 20  # shaded, several parts
    assert not np.array_equal(normal[0], normal[1])
    assert not render_body_video([], body.faces, *cameras, size).any()
