"""ISA-DiT modules (isa4d.models.dit): ISPE, ISA frame mapping, persons, conditioning, init, sizes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from isa4d.diffusion import flow_matching_loss
from isa4d.geometry import grid_ndc, intrinsics_from_fov, look_at, project_points, unproject
from isa4d.models.dit import (
    ATTENTION_2D,
    DIT_MODELS,
    POINT_FRAMES,
    DiTConditions,
    InterspatialPE,
    ISABlock,
    OpenCLIPImageEncoder,
    ReferenceFeatureSampler,
    SmallImageEncoder,
    SpatioTemporalBlock,
    attention,
    build_dit,
    build_image_encoder,
    camera_rays,
    count_parameters,
    dit_tiny,
    latent_frame_groups,
    num_latent_frames_for,
    person_cells,
    point_frame_slice,
    slice_conditions,
    video_frame_range,
)
from isa4d.models.dit.blocks import AdaLNModulation

C = 16


def make_cameras(B: int, T: int, image_size: tuple[int, int], generator: torch.Generator, spin: float = 0.3):
    """Per-frame cameras on a circle of radius 3.5 m around the origin, slowly orbiting."""
    azimuth = torch.rand(B, 1, generator=generator) * 2 * math.pi + torch.linspace(0, spin, T)
    height = 0.2 + 0.6 * torch.rand(B, 1, generator=generator).expand(B, T)
    eye = torch.stack([3.5 * azimuth.sin(), height, 3.5 * azimuth.cos()], dim=-1)
    R, t = look_at(eye, torch.zeros_like(eye))
    fov = 40.0 + 20.0 * torch.rand(B, 1, generator=generator).expand(B, T)
    return intrinsics_from_fov(fov, image_size), R, t


def make_conditions(
    B: int = 2,
    P: int = 2,
    T: int = 9,
    N: int = 32,
    h: int = 16,
    w: int = 16,
    seed: int = 0,
    Tl: int | None = None,
) -> DiTConditions:
    """Random but plausible conditions: P box-shaped 'bodies' moving in front of orbiting cameras."""
    g = torch.Generator().manual_seed(seed)
    H, W = 8 * h, 8 * w
    canonical = (torch.rand(N, 3, generator=g) - 0.5) * torch.tensor([0.6, 1.8, 0.4])
    offsets = torch.zeros(B, P, 1, 1, 3)
    offsets[..., 0] = torch.linspace(-0.6, 0.6, P)[:, None, None]
    motion = 0.03 * torch.randn(B, P, T, 1, 3, generator=g).cumsum(dim=2)
    points = canonical + offsets + motion + 0.02 * torch.randn(B, P, T, N, 3, generator=g)
    K, R, t = make_cameras(B, T, (H, W), g)
    ref_K, ref_R, ref_t = make_cameras(B, 1, (H, W), g)
    Tl = Tl if Tl is not None else (T + 3) // 4
    return DiTConditions(
        ref_latent=torch.randn(B, C, 1, h, w, generator=g),
        points=points,
        person_mask=torch.ones(B, P, dtype=torch.bool),
        K=K,
        R=R,
        t=t,
        image_size=(H, W),
        ref_points=points[:, :, 0] + 0.01,
        ref_K=ref_K[:, 0],
        ref_R=ref_R[:, 0],
        ref_t=ref_t[:, 0],
        ref_image=torch.rand(B, 3, H, W, generator=g) * 2 - 1,
        canonical_points=canonical,
        background_latent=torch.randn(B, C, Tl, h, w, generator=g),
    )


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give the zero-initialised parameters (adaLN, final layer, biases) random values, so every block
    does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.copy_(std * torch.randn(parameter.shape, generator=g))
    return module


@pytest.fixture(scope="module")
def tiny_random() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize(dit_tiny()).eval()


def latent_of_frame(f: int) -> int:
    return 0 if f == 0 else (f + 3) // 4


# ---------------------------------------------------------------------------------------------- ISPE


@pytest.mark.parametrize(("h", "w"), [(16, 16), (12, 20)])
def test_ispe_nearest_grid_token_is_the_token_under_the_pixel(h: int, w: int) -> None:
    """Before the linear layer, the 2-D token closest to a projected point's encoding is its pixel's token."""
    g = torch.Generator().manual_seed(1)
    B, T, N, p = 4, 3, 400, 2
    H, W = 8 * h, 8 * w
    hp, wp = h // p, w // p
    ispe = InterspatialPE(num_bands=4)
    K, R, t = make_cameras(B, T, (H, W), g, spin=1.0)
    points = (torch.rand(B, T, N, 3, generator=g) - 0.5) * torch.tensor([2.0, 2.0, 1.0])
    enc3 = ispe.points(points, K, R, t, (H, W))  # (B, T, N, E)
    enc2 = ispe.grid(hp, wp)  # (S, E)
    nearest = torch.cdist(enc3.double(), enc2.double().expand(B, T, -1, -1)).argmin(dim=-1)

    uv, depth = project_points(points, K, R, t)
    cell = (uv + 0.5) / torch.tensor([W / wp, H / hp])  # patch-grid coordinates, cell (i, j) = [i, i+1)
    inside = (
        (cell[..., 0] >= 0) & (cell[..., 0] < wp) & (cell[..., 1] >= 0) & (cell[..., 1] < hp) & (depth > 0)
    )
    off_border = ((cell - cell.round()).abs() > 1e-3).all(dim=-1)
    under = cell[..., 1].floor().long() * wp + cell[..., 0].floor().long()
    checked = inside & off_border
    assert checked.sum() > 1000
    assert torch.equal(nearest[checked], under[checked])


def test_ispe_grid_matches_grid_ndc_and_points_behind_camera_are_finite() -> None:
    ispe = InterspatialPE(num_bands=3)
    K, R, t = make_cameras(1, 1, (64, 64), torch.Generator().manual_seed(0))
    centre = -(R[0, 0].T @ t[0, 0])
    ahead, behind = centre + 2.0 * R[0, 0, 2], centre - 2.0 * R[0, 0, 2]  # R[2] is the viewing direction
    points = torch.stack([ahead, behind, centre])[None, None]
    ndc = ispe.ndc(points, K, R, t, (64, 64))
    assert torch.isfinite(ndc).all()
    assert torch.allclose(ndc[0, 0, 1], torch.full((3,), ispe.clip))  # behind the camera
    assert ndc[0, 0, 2].abs().max() <= ispe.clip  # at the camera centre: finite, saturated
    assert ndc[0, 0, 0].abs().max() < 1  # straight ahead at 2 m: image centre, inside the frustum
    assert torch.equal(ispe.grid(4, 6), ispe.encoding(grid_ndc(4, 6)))


# ------------------------------------------------------------------------------------- frame mapping


def test_latent_frame_groups_and_video_ranges() -> None:
    assert latent_frame_groups(9, 3).tolist() == [[-1, -1, -1, 0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert latent_frame_groups(8, 2).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert latent_frame_groups(1, 1).tolist() == [[-1, -1, -1, 0]]
    with pytest.raises(ValueError, match="do not fit"):
        latent_frame_groups(10, 3)
    assert video_frame_range(0, 6) == (0, 21)
    assert video_frame_range(4, 10) == (13, 37)
    assert video_frame_range(1, 2, pad=0) == (4, 8)
    assert [num_latent_frames_for(T) for T in (1, 9, 97, 8, 24)] == [1, 3, 25, 2, 6]
    with pytest.raises(ValueError):
        num_latent_frames_for(10)


def _isa_inputs(B=1, P=2, T=9, N=8, hp=4, wp=4, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    Tl = (T + 3) // 4
    cond = make_conditions(B, P, T, N, 2 * hp, 2 * wp, seed=seed, Tl=Tl)
    x3 = torch.randn(B, T, P * N, D, generator=g)
    x2 = torch.randn(B, Tl, hp * wp, D, generator=g)
    c = torch.randn(B, D, generator=g)
    return cond, x3, x2, c


def _isa_run(block, ispe, cond, x3, x2, c, key_mask3=None):
    points = rearrange(cond.points, "b p t n c -> b t (p n) c")
    pe3 = ispe.points(points, cond.K, cond.R, cond.t, cond.image_size)
    hp = wp = int(math.isqrt(x2.shape[2]))
    pad = 4 * x2.shape[1] - x3.shape[1]
    return block(x3, x2, c, key_mask3, pad, pe3, ispe.grid(hp, wp))


@pytest.mark.parametrize("mode", ["joint", "cross_pair"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_isa_latent_frame_sees_exactly_its_video_frames(mode: str, with_mask: bool) -> None:
    """Perturbing the body at video frame f changes only the ISA output of the latent frame holding f."""
    ispe = InterspatialPE(num_bands=4)
    block = randomize(ISABlock(32, 4, mode=mode, pe_dim=ispe.out_dim)).eval()
    cond, x3, x2, c = _isa_inputs()
    key_mask3 = torch.tensor([[True] * 8 + [False] * 8]) if with_mask else None
    with torch.no_grad():
        out3, out2 = _isa_run(block, ispe, cond, x3, x2, c, key_mask3)
        for f in range(cond.num_frames):
            points = cond.points.clone()
            points[:, 0, f] += 0.2  # person 0 is never masked
            x3_changed = x3.clone()
            x3_changed[:, f, :8] += torch.randn(8, 32)
            new3, new2 = _isa_run(
                block, ispe, dataclasses.replace(cond, points=points), x3_changed, x2, c, key_mask3
            )
            i = latent_of_frame(f)
            change2 = (new2 - out2).abs().amax(dim=(0, 2, 3))
            assert change2[i] > 1e-4
            assert torch.all(change2[torch.arange(3) != i] < 1e-6), (f, change2)
            change3 = (new3 - out3).abs().amax(dim=(0, 2, 3))
            group = [g for g in latent_frame_groups(9, 3)[i].tolist() if g >= 0]
            others = [g for g in range(9) if g not in group]
            assert torch.all(change3[others] < 1e-6), (f, change3)
            assert change3[f] > 1e-4


def test_isa_window_layout_and_pre_only() -> None:
    """T = 4T' (a window): no padding; `pre_only` leaves the 3-D tokens untouched."""
    ispe = InterspatialPE(num_bands=4)
    block = randomize(ISABlock(32, 4, pe_dim=ispe.out_dim, pre_only=True)).eval()
    cond, x3, x2, c = _isa_inputs(T=8)
    with torch.no_grad():
        out3, out2 = _isa_run(block, ispe, cond, x3, x2, c)
        points = cond.points.clone()
        points[:, :, 5] += 0.2
        _, new2 = _isa_run(block, ispe, dataclasses.replace(cond, points=points), x3, x2, c)
    assert out3 is x3
    change = (new2 - out2).abs().amax(dim=(0, 2, 3))
    assert change[1] > 1e-4 and change[0] < 1e-6


@pytest.mark.parametrize("mode", ["cross_pair", "joint"])
def test_isa_null_key_joins_the_softmax_and_is_all_a_dropped_body_leaves(mode: str) -> None:
    """`null_key`: the 2-D update equals the explicit formula softmax([q·k_null, q·K₃]/√d)·[v_null; V₃] on
    the block's own projections (joint: over [null; 3-D; 2-D]), and with every 3-D key masked (a dropped
    body) each 2-D token's attention output is exactly the null value."""
    ispe = InterspatialPE(num_bands=4)
    block = randomize(ISABlock(32, 4, mode=mode, pe_dim=ispe.out_dim, null_key=True), seed=3).eval()
    assert block.null_kv.shape == (1 if mode == "joint" else 2, 2, 4, 8) and block.null_kv.abs().min() > 0
    cond, x3, x2, c = _isa_inputs(T=4)  # one latent frame, no padding slots
    points = rearrange(cond.points, "b p t n c -> b t (p n) c")
    pe3 = block.pe_proj(ispe.points(points, cond.K, cond.R, cond.t, cond.image_size))
    with torch.no_grad():
        qkv3, _ = block.branch3.pre(x3, c, pe3)
        qkv2, mods2 = block.branch2.pre(x2, c, block.pe_proj(ispe.grid(4, 4)))
        keys = {name: rearrange(qkv3[name], "b t h m d -> b h (t m) d") for name in "kv"}
        if mode == "joint":
            keys = {name: torch.cat([keys[name], qkv2[name][:, 0]], dim=2) for name in "kv"}
        null_k, null_v = (n[None, :, None] for n in block.null_kv[0])
        k, v = torch.cat([null_k, keys["k"]], dim=2), torch.cat([null_v, keys["v"]], dim=2)
        weights = torch.softmax(qkv2["q"][:, 0] @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
        expected = block.branch2.post(x2, rearrange(weights @ v, "b h s d -> b 1 s (h d)"), mods2)
        _, out2 = _isa_run(block, ispe, cond, x3, x2, c)
        assert torch.allclose(out2, expected, atol=1e-5)
        if mode == "cross_pair":  # a dropped body: only the null key is left to the 2-D queries
            no_keys = torch.zeros(1, 16, dtype=torch.bool)
            _, dropped2 = _isa_run(block, ispe, cond, x3, x2, c, key_mask3=no_keys)
            only_null = rearrange(null_v.expand(1, 4, 16, 8), "b h s d -> b 1 s (h d)")
            assert torch.allclose(dropped2, block.branch2.post(x2, only_null, mods2), atol=1e-6)
            assert (dropped2 - out2).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------- persons


def _swap_persons(cond: DiTConditions) -> DiTConditions:
    order = [1, 0]
    return dataclasses.replace(
        cond,
        points=cond.points[:, order],
        person_mask=cond.person_mask[:, order],
        ref_points=cond.ref_points[:, order],
    )


def test_isa_block_is_person_permutation_equivariant() -> None:
    ispe = InterspatialPE(num_bands=4)
    block = randomize(ISABlock(32, 4, pe_dim=ispe.out_dim)).eval()
    cond, x3, x2, c = _isa_inputs()
    swapped = rearrange(
        rearrange(x3, "b t (p n) d -> b t p n d", p=2)[:, :, [1, 0]], "b t p n d -> b t (p n) d"
    )
    with torch.no_grad():
        out3, out2 = _isa_run(block, ispe, cond, x3, x2, c)
        new3, new2 = _isa_run(block, ispe, _swap_persons(cond), swapped, x2, c)
    assert torch.allclose(new2, out2, atol=1e-5)
    new3 = rearrange(
        rearrange(new3, "b t (p n) d -> b t p n d", p=2)[:, :, [1, 0]], "b t p n d -> b t (p n) d"
    )
    assert torch.allclose(new3, out3, atol=1e-5)


@pytest.mark.parametrize("isa_init", ["xavier", "aligned"])
def test_aligned_isa_init_makes_each_token_favour_the_point_over_it(isa_init: str) -> None:
    """`isa_init="aligned"`: in a fresh model, a 2-D token's rendering attention scores highest the 3-D key
    whose ISPE encoding is its own (a point projecting onto the token's centre), in every head of every
    layer, and the reconstruction direction alike; Xavier's projections do not."""
    torch.manual_seed(0)
    model = dit_tiny(isa_init=isa_init)
    enc = model.ispe.grid(4, 4)  # (S, E): 16 tokens, and 16 points exactly on their centres
    hits = []
    for layer in model.layers:
        isa = layer.isa
        zeros = torch.zeros(1, 1, 16, model.hidden_size)  # no content: only the ISPE term enters
        c = torch.zeros(1, model.hidden_size)
        qkv2, _ = isa.branch2.pre(zeros, c, isa.pe_proj(enc))
        qkv3, _ = isa.branch3.pre(zeros, c, isa.pe_proj(enc))
        pairs = [(qkv2["q"], qkv3["k"])] + ([(qkv3["q"], qkv2["k"])] if "q" in qkv3 else [])
        for q, k in pairs:
            best = (q @ k.transpose(-1, -2)).argmax(dim=-1)  # (1, 1, heads, S)
            hits.append((best == torch.arange(16)).float().mean())
    assert len(hits) == 3  # layer 0 both ways, the last layer (3-D keys only) one way
    if isa_init == "aligned":
        assert all(hit == 1 for hit in hits)
        isa = model.layers[0].isa
        assert torch.equal(isa.branch3.qkv.weight("k"), isa.branch2.qkv.weight("q"))
        assert torch.equal(isa.branch3.qkv.linear.weight[128:256], isa.branch2.qkv.linear.weight[:128])
    else:
        assert max(hits) < 0.5


def test_isa_init_is_checked_and_kept_in_the_config() -> None:
    with pytest.raises(ValueError, match="unknown isa_init 'identity'"):
        dit_tiny(isa_init="identity")
    assert type(dit_tiny()).from_config(dit_tiny(isa_init="aligned").config).config["isa_init"] == "aligned"


def test_model_is_person_permutation_invariant(tiny_random) -> None:
    cond = make_conditions(B=1, N=16, h=8, w=8)
    x = torch.randn(1, C, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        v = tiny_random(x, torch.tensor([0.4]), cond)
        v_swapped = tiny_random(x, torch.tensor([0.4]), _swap_persons(cond))
    assert v.abs().max() > 1e-3
    assert torch.allclose(v, v_swapped, atol=1e-5)


def test_padded_persons_have_no_effect(tiny_random) -> None:
    cond = make_conditions(B=2, P=2, N=16, h=8, w=8)
    one = dataclasses.replace(
        cond,
        points=cond.points[:, :1],
        person_mask=cond.person_mask[:, :1],
        ref_points=cond.ref_points[:, :1],
    )
    x = torch.randn(2, C, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        reference = tiny_random(x, t, one)
        for garbage in (float("nan"), 1e4, -3.0):
            points, ref_points = cond.points.clone(), cond.ref_points.clone()
            points[:, 1], ref_points[:, 1] = garbage, garbage
            padded = dataclasses.replace(
                cond, points=points, ref_points=ref_points, person_mask=torch.tensor([[True, False]] * 2)
            )
            assert torch.allclose(tiny_random(x, t, padded), reference, atol=1e-5)
        nobody = dataclasses.replace(
            cond,
            points=cond.points[:, :0],
            person_mask=cond.person_mask[:, :0],
            ref_points=cond.ref_points[:, :0],
        )
        all_padded = dataclasses.replace(cond, person_mask=torch.zeros(2, 2, dtype=torch.bool))
        assert torch.allclose(tiny_random(x, t, nobody), tiny_random(x, t, all_padded), atol=1e-6)


# -------------------------------------------------------------------------------------- conditioning


def test_drop_smpl_equals_no_persons_and_drops_change_the_output(tiny_random) -> None:
    cond = make_conditions(B=2, N=16, h=8, w=8)
    x = torch.randn(2, C, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        v = tiny_random(x, t, cond)
        dropped = tiny_random(x, t, cond.with_drops(smpl=torch.tensor([True, False])))
        nobody = tiny_random(
            x, t, dataclasses.replace(cond, person_mask=torch.tensor([[False, False], [True, True]]))
        )
        assert torch.allclose(dropped, nobody, atol=1e-6)
        assert torch.allclose(dropped[1], v[1], atol=1e-6) and not torch.allclose(dropped[0], v[0], atol=1e-3)
        for name in ("ref", "camera"):
            other = tiny_random(x, t, cond.with_drops(**{name: True}))
            assert (other - v).abs().amax() > 1e-3, name
        unconditional = cond.unconditional()
        assert all(unconditional.drop_flags(name).all() for name in ("ref", "smpl", "camera"))


def test_reference_features_are_sampled_at_the_projected_pixel() -> None:
    """grid_sample at the ISA NDC of a point reads the latent pixel the point projects to."""
    g = torch.Generator().manual_seed(5)
    h, w = 6, 10
    H, W = 8 * h, 8 * w
    sampler = ReferenceFeatureSampler(C, C)
    with torch.no_grad():
        sampler.proj.weight.copy_(torch.eye(C)[:, :, None, None])
        sampler.proj.bias.zero_()
    latent = torch.randn(1, C, 1, h, w, generator=g)
    K, R, t = make_cameras(1, 1, (H, W), g)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    latent_uv = torch.stack([cols, rows], dim=-1).reshape(-1, 2).double()
    image_uv = (latent_uv + 0.5) * 8 - 0.5  # latent pixel centres in image pixels
    world = unproject(
        image_uv, torch.full((h * w,), 3.0, dtype=torch.float64), K[0].double(), R[0].double(), t[0].double()
    )
    ndc = InterspatialPE().ndc(world.float(), K[0], R[0], t[0], (H, W))
    sampled = sampler(latent, ndc)
    expected = rearrange(latent[:, :, 0], "b c h w -> b (h w) c")
    assert torch.allclose(sampled, expected, atol=1e-4)


def test_camera_rays_stack_the_four_frames_of_each_latent_frame() -> None:
    cond = make_conditions(B=1, T=9)
    rays = camera_rays(cond.K, cond.R, cond.t, cond.image_size, (16, 16), 3)
    assert rays.shape == (1, 24, 3, 16, 16)
    from isa4d.geometry import plucker_image

    per_frame = plucker_image(cond.K, cond.R, cond.t, cond.image_size, out_size=(16, 16))
    for i, group in enumerate(latent_frame_groups(9, 3).tolist()):
        for slot, frame in enumerate(group):
            assert torch.equal(rays[0, 6 * slot : 6 * slot + 6, i], per_frame[0, max(frame, 0)])


def test_image_encoders() -> None:
    encoder = SmallImageEncoder(embed_dim=48, width=8, grid=2, input_size=32)
    assert encoder(torch.rand(3, 3, 40, 56)).shape == (3, 4, 48)
    assert build_image_encoder(None) is None
    assert isinstance(build_image_encoder({"name": "small", "embed_dim": 8}), SmallImageEncoder)
    with pytest.raises(KeyError):
        build_image_encoder("clip-from-the-internet")


def test_open_clip_encoder_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        OpenCLIPImageEncoder(tmp_path / "missing.safetensors")
    weights = tmp_path / "open_clip.bin"
    weights.write_bytes(b"not a checkpoint")
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="open_clip_torch"):
            OpenCLIPImageEncoder(weights)
    else:  # installed: a corrupt file must fail while loading, not download anything
        with pytest.raises(Exception):  # noqa: B017
            OpenCLIPImageEncoder(weights)


def test_open_clip_encoder_loads_the_local_file_frozen(monkeypatch, tmp_path) -> None:
    """With a stand-in open_clip: the weights come from the given path, the tower is frozen and in eval."""
    import types

    calls = {}

    class Visual(torch.nn.Module):
        output_dim, image_size = 12, 32

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 12)

        def forward(self, x):
            calls["size"] = tuple(x.shape[-2:])
            return self.linear(x.mean(dim=(2, 3)))

    def create_model(name, pretrained=None, device=None):
        calls["args"] = (name, pretrained)
        return types.SimpleNamespace(visual=Visual())

    monkeypatch.setitem(
        __import__("sys").modules, "open_clip", types.SimpleNamespace(create_model=create_model)
    )
    weights = tmp_path / "vit.bin"
    weights.write_bytes(b"x")
    encoder = OpenCLIPImageEncoder(weights, model_name="ViT-B-32")
    assert calls["args"] == ("ViT-B-32", str(weights))
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.visual.training
    assert encoder(torch.rand(2, 3, 20, 24) * 2 - 1).shape == (2, 1, 12) and calls["size"] == (32, 32)
    model = dit_tiny(
        image_encoder={"name": "open_clip", "weights_path": str(weights), "model_name": "ViT-B-32"}
    )
    assert count_parameters(model) - count_parameters(model, trainable_only=True) == 3 * 12 + 12


# ------------------------------------------------------------------------------------------ attention


def test_attention_masks_keys_and_zeroes_rows_without_keys() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, False, True, False, True], [False] * 5]).reshape(2, 1, 1, 5)
    out = attention(q, k, v, mask)
    keep = [0, 2, 4]
    expected = attention(q[:1], k[:1, :, keep], v[:1, :, keep])
    assert torch.allclose(out[:1], expected, atol=1e-6)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    assert torch.allclose(attention(q, k, v, backend="xformers"), attention(q, k, v))  # CPU: SDPA fallback
    with pytest.raises(ValueError):
        attention(q, k, v, backend="flash-please")


# ----------------------------------------------------------------------------------- model and sizes


def test_fresh_model_outputs_exactly_zero_velocity() -> None:
    model = dit_tiny()
    cond = make_conditions(B=2, N=16)
    v = model(torch.randn(2, C, 3, 16, 16), torch.rand(2), cond)
    assert v.shape == (2, C, 3, 16, 16)
    assert torch.equal(v, torch.zeros_like(v))
    for module in model.modules():
        if isinstance(module, AdaLNModulation):
            assert not module.linear.weight.any() and not module.linear.bias.any()


def test_gradients_reach_every_parameter() -> None:
    """From the zero init (adaLN-Zero: a block's inner weights get gradients once its gate moved, which
    needs the gates after it to have moved), after four optimiser steps every parameter gets a gradient."""
    torch.manual_seed(0)
    assert_every_parameter_learns(dit_tiny().train())


def assert_every_parameter_learns(model: torch.nn.Module) -> None:
    """Four Adam steps of the flow loss on half-dropped conditions: every parameter then has a gradient."""
    drops = torch.tensor([True, False])
    cond = make_conditions(B=2, N=16, h=8, w=8).with_drops(ref=drops, smpl=drops, camera=drops)
    x0 = torch.randn(2, C, 3, 8, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        optimizer.zero_grad()
        flow_matching_loss(model, x0, cond, g).backward()
        optimizer.step()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing


def test_gradient_checkpointing_matches() -> None:
    model = randomize(dit_tiny()).train()
    cond = make_conditions(B=1, N=16, h=8, w=8)
    x0 = torch.randn(1, C, 3, 8, 8)
    grads = []
    for enabled in (False, True):
        model.set_gradient_checkpointing(enabled)
        model.zero_grad()
        loss = flow_matching_loss(model, x0, cond, torch.Generator().manual_seed(1))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def _explicit_person_cells(cond: DiTConditions, frames_of: list[list[int]], h: int, w: int) -> torch.Tensor:
    """`person_cells` by loops over samples, latent frames, persons and points (float64 numpy pinhole)."""
    H, W = cond.image_size
    B, P = cond.person_mask.shape
    out = np.zeros((B, len(frames_of), h, w), dtype=bool)
    for b in range(B):
        for j, frames in enumerate(frames_of):
            hits = set()
            for f in frames:
                K, R, t = (x[b, f].double().numpy() for x in (cond.K, cond.R, cond.t))
                for p in range(P):
                    if not cond.person_mask[b, p]:
                        continue
                    for X in cond.points[b, p, f].double().numpy():
                        x, y, z = K @ (R @ X + t)
                        if z <= 0:
                            continue
                        col, row = math.floor((x / z + 0.5) * w / W), math.floor((y / z + 0.5) * h / H)
                        if 0 <= col < w and 0 <= row < h:
                            hits.add((row, col))
            for row, col in hits:  # one cell of dilation
                out[b, j, max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = True
    return torch.from_numpy(out)


def test_person_cells_match_an_explicit_projection() -> None:
    """The latent cells a person's points project into (any frame of the latent frame, grown by one
    cell), for a clip and for a window; padded persons (NaN points) mark nothing."""
    cond = make_conditions(B=2, P=2, T=9, N=32, h=6, w=8)
    cond.person_mask[1, 1] = False
    cond.points[1, 1] = float("nan")
    clip = person_cells(cond, 3, (6, 8))
    assert clip.shape == (2, 3, 6, 8) and clip.dtype == torch.bool
    assert torch.equal(clip, _explicit_person_cells(cond, [[0], [1, 2, 3, 4], [5, 6, 7, 8]], 6, 8))
    assert 0.05 < clip.float().mean() < 0.8  # neither empty nor everything
    window = person_cells(slice_conditions(cond, 1, 3, 3), 2, (6, 8))  # video frames 1..8
    assert torch.equal(window, clip[:, 1:])
    assert torch.equal(person_cells(cond, 3, (6, 8), dilation=0) <= clip, torch.ones_like(clip))
    # The padded person's points (moved to where they would add cells) change nothing.
    real = cond.person_mask[:, :, None, None, None]
    moved = dataclasses.replace(cond, points=torch.where(real, cond.points, 0))
    assert torch.equal(person_cells(moved, 3, (6, 8)), clip)


def _train_on_person_location(steps: int, size: float = 1.0, **overrides) -> tuple[float, float]:
    """Train a 1-layer tiny DiT on a task whose target is only where the person is (+1 on the latent cells
    the points project into, -1 elsewhere; new random scenes and cameras every step; bodies scaled by
    `size`); return its held-out flow loss with the body and with the body dropped (mean of 4 scenes)."""
    torch.manual_seed(0)
    model = dit_tiny(use_canonical=False, depth=1, **overrides)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def scene(seed: int, batch: int = 4) -> tuple[torch.Tensor, DiTConditions]:
        cond = make_conditions(B=batch, P=1, T=5, N=64, h=8, w=8, seed=seed)
        cond = dataclasses.replace(cond, points=cond.points * size, background_latent=None)
        cells = person_cells(cond, 2, (8, 8), dilation=0).float()
        return (2 * cells - 1)[:, None].expand(batch, C, 2, 8, 8).contiguous(), cond

    def loss(x0: torch.Tensor, cond: DiTConditions, seed: int) -> torch.Tensor:
        t = torch.full((x0.shape[0],), 0.8)  # mostly noise: the target must come from the conditions
        return flow_matching_loss(model, x0, cond, torch.Generator().manual_seed(seed), t=t)

    for step in range(steps):
        optimizer.zero_grad()
        loss(*scene(step), seed=10**6 + step).backward()
        optimizer.step()
    held_out = [scene(10**5 + i) for i in range(4)]
    with torch.no_grad():
        body = sum(loss(x0, cond, i) for i, (x0, cond) in enumerate(held_out)) / 4
        dropped = sum(loss(x0, cond.with_drops(smpl=True), i) for i, (x0, cond) in enumerate(held_out)) / 4
    return float(body), float(dropped)


@pytest.mark.slow
def test_body_path_learns_where_the_person_is() -> None:
    """The 3-D branch can carry a body's location to the 2-D tokens: with the body the model beats the
    same model with the body dropped on held-out scenes (measured: flow loss 0.17 against 0.27 after 300
    steps, 28 s; equal before training)."""
    body, dropped = _train_on_person_location(300)
    assert body < 0.8 * dropped, (body, dropped)


@pytest.mark.slow
def test_aligned_isa_init_uses_the_body_sooner() -> None:
    """`isa_init="aligned"` against Xavier on the same task with half-size bodies, after 150 steps (measured:
    held-out loss with / without the body 0.44 aligned, 0.80 Xavier)."""
    ratios = {}
    for isa_init in ("xavier", "aligned"):
        body, dropped = _train_on_person_location(150, size=0.5, isa_init=isa_init)
        ratios[isa_init] = body / dropped
    assert ratios["aligned"] < 0.6 and ratios["aligned"] < 0.75 * ratios["xavier"], ratios


def test_window_conditions_reproduce_the_per_frame_conditions() -> None:
    """Slicing a 33-frame video into latent windows keeps every latent frame's video frames and cameras,
    and the ISA block (per latent frame) computes the same outputs on a window as on the whole video."""
    cond = make_conditions(B=1, P=2, T=33, N=8, h=8, w=8)
    L = 9
    groups = latent_frame_groups(33, L)
    ispe = InterspatialPE(num_bands=4)
    block = randomize(ISABlock(32, 4, pe_dim=ispe.out_dim)).eval()
    g = torch.Generator().manual_seed(2)
    x3 = torch.randn(1, 33, 16, 32, generator=g)
    x2 = torch.randn(1, L, 16, 32, generator=g)
    c = torch.randn(1, 32, generator=g)
    full_rays = camera_rays(cond.K, cond.R, cond.t, cond.image_size, (8, 8), L)
    with torch.no_grad():
        full3, full2 = _isa_run(block, ispe, cond, x3, x2, c)
        for a, b in [(0, 6), (4, 9), (2, 5), (8, 9)]:
            window = slice_conditions(cond, a, b, L)
            assert torch.equal(slice_conditions(cond, a, b).points, window.points)
            start, stop = video_frame_range(a, b)
            assert torch.equal(window.points, cond.points[:, :, start:stop])
            assert torch.equal(window.K, cond.K[:, start:stop]) and torch.equal(
                window.R, cond.R[:, start:stop]
            )
            assert torch.equal(window.background_latent, cond.background_latent[:, :, a:b])
            window_groups = latent_frame_groups(window.num_frames, b - a)
            assert torch.equal(
                torch.where(window_groups >= 0, window_groups + start, -1)[groups[a:b] >= 0],
                groups[a:b][groups[a:b] >= 0],
            )
            rays = camera_rays(window.K, window.R, window.t, window.image_size, (8, 8), b - a)
            assert torch.allclose(rays, full_rays[:, :, a:b])
            win3, win2 = _isa_run(block, ispe, window, x3[:, start:stop], x2[:, a:b], c)
            assert torch.allclose(win2, full2[:, a:b], atol=1e-5)
            assert torch.allclose(win3, full3[:, start:stop], atol=1e-5)


def test_model_runs_on_windows_and_without_ispe() -> None:
    cond = dataclasses.replace(make_conditions(B=1, T=8, N=16, h=8, w=8, Tl=2), background_latent=None)
    x = torch.randn(1, C, 2, 8, 8)
    for overrides in (
        {},
        {"use_ispe": False, "isa_mode": "cross_pair", "use_canonical": False, "image_encoder": None},
    ):
        model = randomize(dit_tiny(**overrides))
        assert model(x, 0.5, cond).shape == x.shape
    assert all(layer.isa.pe_proj is None for layer in model.layers)
    rebuilt = type(model).from_config(model.config)
    assert count_parameters(rebuilt) == count_parameters(model)


def test_bf16_autocast_keeps_geometry_in_float32(tiny_random) -> None:
    cond = make_conditions(B=1, N=8, h=8, w=8)
    x = torch.randn(1, C, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = tiny_random(x, 0.3, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = tiny_random(x, 0.3, cond)
    assert mixed.dtype == torch.float32
    assert (mixed - reference).abs().max() < 0.05 * reference.abs().max()


def test_size_registry_and_paper4b_on_meta() -> None:
    assert set(DIT_MODELS) == {"tiny", "small", "base", "paper4b"}
    assert 1e6 < count_parameters(dit_tiny()) < 1e7
    with pytest.raises(KeyError):
        build_dit("huge")
    with torch.device("meta"):
        model = build_dit("paper4b")
    count = count_parameters(model)
    assert abs(count - 4.0e9) <= 0.05 * 4.0e9, count
    assert next(model.parameters()).is_meta


# ----------------------------------------------------------- full spatio-temporal attention, fewer 3-D frames


def _explicit_full_attention_block(
    block: SpatioTemporalBlock, x: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """`SpatioTemporalBlock` by hand (plain reshapes, an explicit softmax over every pair of the T'·S
    tokens): adaLN, q/k/v with RMS qk-norm, attention, gated residual, gated FFN."""
    B, T, S, D = x.shape
    H = block.qkv.heads
    d = D // H
    mods = F.silu(c) @ block.adaLN_modulation.linear.weight.T + block.adaLN_modulation.linear.bias
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (m[:, None, None] for m in mods.chunk(6, dim=-1))

    def norm(y: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(y, (D,), eps=1e-6)

    def rms(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    h = (norm(x) * (1 + scale_a) + shift_a).reshape(B, T * S, D)
    qkv = h @ block.qkv.linear.weight.T + block.qkv.linear.bias
    q, k, v = qkv.reshape(B, T * S, 3, H, d).permute(2, 0, 3, 1, 4)
    q, k = rms(q, block.qkv.norms["q"].weight), rms(k, block.qkv.norms["k"].weight)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, H, T'S, T'S)
    out = (weights @ v).permute(0, 2, 1, 3).reshape(B, T, S, D)
    x = x + gate_a * (out @ block.proj.weight.T + block.proj.bias)
    m = norm(x) * (1 + scale_m) + shift_m
    m = F.gelu(m @ block.mlp.fc1.weight.T + block.mlp.fc1.bias, approximate="tanh")
    return x + gate_m * (m @ block.mlp.fc2.weight.T + block.mlp.fc2.bias)


def test_spatio_temporal_block_equals_explicit_full_attention() -> None:
    """Every 2-D token attends every token of every latent frame: the block equals the hand-written
    full attention, and a token's output depends on a token of another frame and position."""
    block = randomize(SpatioTemporalBlock(16, 2, mlp_ratio=2.0), std=0.3).eval()
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 3, 4, 16, generator=g), torch.randn(2, 16, generator=g)
    with torch.no_grad():
        out = block(x, c)
        assert torch.allclose(out, _explicit_full_attention_block(block, x, c), atol=1e-5)
        moved = x.clone()
        moved[:, 0, 0] += torch.randn(16, generator=g)
        change = (block(moved, c) - out).abs().amax(dim=(0, 3))
    assert change[2, 3] > 1e-3  # another frame, another position: one block reaches it


def test_full_attention_model_shapes_gradients_and_parameters() -> None:
    factorized, full = dit_tiny(), dit_tiny(attention_2d="full")
    assert ATTENTION_2D == ("factorized", "full") and full.config["attention_2d"] == "full"
    for layer in full.layers:
        assert isinstance(layer.spatio_temporal, SpatioTemporalBlock)
        assert not hasattr(layer, "spatial") and not hasattr(layer, "temporal")
    one_block = count_parameters(factorized.layers[0].temporal)
    assert count_parameters(factorized) - count_parameters(full) == len(full.layers) * one_block
    assert count_parameters(type(full).from_config(full.config)) == count_parameters(full)
    with pytest.raises(ValueError, match="attention_2d"):
        dit_tiny(attention_2d="global")

    torch.manual_seed(0)
    assert_every_parameter_learns(full.train())
    prefix = randomize(dit_tiny(attention_2d="full", ref_mode="prefix")).eval()
    x0, cond = torch.randn(2, C, 3, 8, 8), make_conditions(B=2, N=16, h=8, w=8)
    with torch.no_grad():
        v = prefix(x0, 0.5, cond)
    assert v.shape == x0.shape and torch.isfinite(v).all() and v.abs().amax() > 0


@pytest.mark.parametrize("pad", [0, 3, 4, 7])  # window, clip, window + prefix frame, clip + prefix frame
@pytest.mark.parametrize("frames", POINT_FRAMES)
def test_point_frame_slice_keeps_every_stride_th_frame(pad: int, frames: int) -> None:
    """The kept video frames sit on the last slot(s) of each latent frame's four, evenly spaced, and
    group into `frames` slots per latent frame after `pad3` padding slots."""
    Tl = 5
    kept, pad3 = point_frame_slice(pad, frames)
    stride = 4 // frames
    slots = [f + pad for f in range(4 * Tl - pad)[kept]]
    assert slots == [s for s in range(pad, 4 * Tl) if (s + 1) % stride == 0]
    assert pad3 == sum((s + 1) % stride == 0 for s in range(pad)) and pad3 + len(slots) == frames * Tl


def test_point_frame_slice_agrees_on_windows_and_rejects_other_counts() -> None:
    """A window (T = 4T') keeps the same video frames as the whole 33-frame clip."""
    for frames in POINT_FRAMES:
        clip = set(range(33)[point_frame_slice(3, frames)[0]])
        for a, b in [(0, 6), (4, 9), (2, 5)]:
            start, stop = video_frame_range(a, b)
            pad = 3 if a == 0 else 0
            window = {start + f for f in range(stop - start)[point_frame_slice(pad, frames)[0]]}
            assert window == {f for f in clip if start <= f < stop}
    with pytest.raises(ValueError, match="point_frames_per_latent"):
        point_frame_slice(3, 3)
    with pytest.raises(ValueError, match="point_frames_per_latent"):
        dit_tiny(point_frames_per_latent=3)


def test_fewer_point_frames_carry_fewer_tokens_and_ignore_the_other_frames() -> None:
    """`point_frames_per_latent=1`: the 3-D branch carries the frames 0, 4, 8 of a 9-frame clip (T' = 3
    instead of 9); the bodies of frames 1-3 and 5-7 do not change the output, frame 4's does."""
    cond = make_conditions(B=1, P=2, T=9, N=8, h=8, w=8)
    x = torch.randn(1, C, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for frames, expected in ((1, 3), (2, 5), (4, 9)):
        torch.manual_seed(0)
        model = randomize(dit_tiny(point_frames_per_latent=frames)).eval()
        seen = []
        model.layers[0].point_temporal.register_forward_hook(
            lambda m, args, out, seen=seen: seen.append(args[0].shape[1])
        )
        with torch.no_grad():
            out = model(x, 0.4, cond)
            skipped = cond.points.clone()
            skipped[:, :, [1, 2, 3, 5, 6, 7]] += 0.3
            kept = cond.points.clone()
            kept[:, :, 4] += 0.3
            after_skipped = model(x, 0.4, dataclasses.replace(cond, points=skipped))
            after_kept = model(x, 0.4, dataclasses.replace(cond, points=kept))
        assert seen[0] == expected
        assert (after_kept - out).abs().amax() > 1e-4
        if frames == 1:
            assert torch.equal(after_skipped, out)
        else:
            assert (after_skipped - out).abs().amax() > 1e-4
