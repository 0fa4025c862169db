"""Flow matching, Euler sampling, CFG and long-video windows (isa4d.diffusion)."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from isa4d.diffusion import (
    FlowMatching,
    blend_weights,
    draw_condition_drops,
    euler_sample,
    flow_matching_loss,
    guided_velocity,
    interpolate,
    latent_windows,
    sample_logit_normal,
    sample_long,
    sampling_times,
    time_shift,
    velocity_target,
)
from isa4d.models.dit import dit_tiny, slice_conditions, video_frame_range
from test_dit_modules import make_conditions

C = 16


def repeat(cond, n: int):
    """The conditions of a batch of one, repeated n times."""
    changes = {
        field.name: value.expand(n, *value.shape[1:])
        for field in dataclasses.fields(cond)
        if isinstance(value := getattr(cond, field.name), torch.Tensor) and field.name != "canonical_points"
    }
    return dataclasses.replace(cond, **changes)


def exact_field(x0: torch.Tensor):
    """The true velocity of the straight path towards a known x0: v(x, t) = (x - x0) / t (= ε - x0)."""

    def model_fn(x, t, cond):
        return (x - x0) / t.view(-1, 1, 1, 1, 1)

    return model_fn


def test_path_and_target_sign() -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 2, 3, 4, 4, generator=g), torch.randn(2, 2, 3, 4, 4, generator=g)
    assert torch.equal(interpolate(x0, noise, torch.zeros(2)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(2)), noise)
    t, dt = torch.full((2,), 0.3, dtype=torch.float64), 1e-6
    numeric = (
        interpolate(x0.double(), noise.double(), t + dt) - interpolate(x0.double(), noise.double(), t)
    ) / dt
    assert torch.allclose(numeric, velocity_target(x0, noise).double(), atol=1e-5)  # v = dx_t/dt = ε - x0


def test_logit_normal_times() -> None:
    t = sample_logit_normal(20000, mean=0.5, std=1.0, generator=torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() < 1
    assert abs(t.median().item() - torch.sigmoid(torch.tensor(0.5)).item()) < 0.02


def test_flow_matching_loss_values() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, 1, 4, 4, generator=g)
    noise = torch.randn(64, 2, 1, 4, 4, generator=g)
    oracle = flow_matching_loss(lambda x, t, cond: noise - x0, x0, None, noise=noise)
    assert oracle.item() == 0.0
    zero = flow_matching_loss(lambda x, t, cond: torch.zeros_like(x), x0, None, noise=noise)
    assert torch.allclose(zero, ((noise - x0) ** 2).mean())
    assert flow_matching_loss(lambda x, t, c: torch.zeros_like(x), x0, None, g, reduction="none").shape == (
        64,
    )
    mask = torch.zeros(1, 1, 1, 1, 1)
    mask_full = torch.ones(64, 2, 1, 4, 4)
    mask_full[:, 1] = 0  # only channel 0 counts
    masked = flow_matching_loss(
        lambda x, t, c: torch.zeros_like(x), x0, None, noise=noise, loss_mask=mask_full
    )
    assert torch.allclose(masked, ((noise - x0)[:, 0] ** 2).mean())
    assert flow_matching_loss(lambda x, t, c: x, x0, None, g, loss_mask=mask).item() == 0.0


def test_condition_dropout() -> None:
    g = torch.Generator().manual_seed(0)
    flags = draw_condition_drops(20000, 0.1, 0.2, 0.0, generator=g)
    assert abs(flags["ref"].float().mean() - 0.1) < 0.01 and abs(flags["smpl"].float().mean() - 0.2) < 0.01
    assert not flags["camera"].any()
    together = draw_condition_drops(1000, 0.0, 0.0, 0.0, p_all=1.0, generator=g)
    assert all(flag.all() for flag in together.values())
    cond = make_conditions(B=4, N=8).with_drops(camera=torch.tensor([True, False, False, False]))
    seen = {}

    def model_fn(x, t, c):
        seen["cond"] = c
        return torch.zeros_like(x)

    FlowMatching(p_drop_ref=1.0, p_drop_smpl=0.0, p_drop_camera=0.0).loss(
        model_fn, torch.randn(4, C, 3, 16, 16), cond, g
    )
    assert seen["cond"].drop_flags("ref").all() and not seen["cond"].drop_flags("smpl").any()
    assert seen["cond"].drop_flags("camera").tolist() == [True, False, False, False]  # kept


def test_time_shift() -> None:
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(time_shift(t, 1.0), t)
    shifted = time_shift(t, 3.0)
    assert (
        shifted[0] == 0
        and shifted[-1] == 1
        and (shifted[1:-1] > t[1:-1]).all()
        and (shifted.diff() > 0).all()
    )
    times = sampling_times(30, 3.0)
    assert times.shape == (31,) and times[0] == 1 and times[-1] == 0


@pytest.mark.parametrize("num_steps", [1, 3, 30])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_integrates_the_straight_path_exactly(num_steps: int, shift: float) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, C, 3, 4, 4, generator=g)
    noise = torch.randn(2, C, 3, 4, 4, generator=g)
    sample = euler_sample(exact_field(x0), noise, None, num_steps=num_steps, shift=shift, guidance_scale=1.0)
    assert torch.allclose(sample, x0, atol=1e-6)


def test_cfg_scale_one_is_the_conditional_prediction_and_scale_s_combines() -> None:
    cond = make_conditions(B=2, N=8)
    calls = []

    def model_fn(x, t, c):
        calls.append(c)
        dropped = c.drop_flags("ref").float().view(-1, 1, 1, 1, 1)
        return x * (1 + 2 * dropped) + t.view(-1, 1, 1, 1, 1) * (3 - dropped)

    x, t = torch.randn(2, C, 3, 4, 4), torch.tensor([0.7, 0.2])
    v_cond = model_fn(x, t, cond)
    calls.clear()
    assert torch.equal(guided_velocity(model_fn, x, t, cond, 1.0), v_cond)
    assert len(calls) == 1
    v_uncond = model_fn(x, t, cond.unconditional())
    for scale in (0.0, 2.0, 4.5):
        expected = v_uncond + scale * (v_cond - v_uncond)
        assert torch.allclose(guided_velocity(model_fn, x, t, cond, scale), expected)
    uncond = cond.with_drops(ref=True)
    assert torch.allclose(
        guided_velocity(model_fn, x, t, cond, 2.0, uncond=uncond), 2 * v_cond - model_fn(x, t, uncond)
    )
    # uncond_drops=("smpl",) (body guidance): the unconditional pass drops the body and nothing else.
    calls.clear()
    guided_velocity(model_fn, x, t, cond, 2.0, uncond_drops=("smpl",))
    uncond_flags = [bool(calls[-1].drop_flags(name).all()) for name in ("ref", "smpl", "camera")]
    assert uncond_flags == [False, True, False]
    assert not calls[0].drop_flags("smpl").any()
    # A one-step sample with scale s moves along the guided velocity.
    noise = torch.randn(2, C, 3, 4, 4)
    sample = euler_sample(model_fn, noise, cond, num_steps=1, shift=1.0, guidance_scale=2.0)
    ones = torch.ones(2)
    guided = guided_velocity(model_fn, noise, ones, cond, 2.0)
    assert torch.allclose(sample, noise - guided)


def test_latent_windows_and_weights() -> None:
    assert latent_windows(25, 6, 2) == [(0, 6), (4, 10), (8, 14), (12, 18), (16, 22), (19, 25)]
    assert latent_windows(5, 6, 2) == [(0, 5)]
    assert latent_windows(6, 6, 2) == [(0, 6)]
    with pytest.raises(ValueError):
        latent_windows(10, 4, 4)
    assert blend_weights(0, 6, 25, 2).tolist() == [1, 1, 1, 1, 2 / 3, 1 / 3]
    assert blend_weights(4, 10, 25, 2).tolist() == [1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3]
    assert [video_frame_range(a, b) for a, b in latent_windows(25, 6, 2)[:2]] == [
        (0, 21),
        (13, 37),
    ]  # 24 frames


@pytest.mark.parametrize("strategy", ["prefix", "blend"])
def test_long_video_windows_see_exact_conditions(strategy: str) -> None:
    """Each window's model call gets exactly the sliced per-frame conditions; with the exact velocity
    field both strategies return the known clean latents; the prefix stays fixed between windows."""
    L = 9  # 33 video frames
    cond = make_conditions(B=1, P=1, T=33, N=4, h=4, w=4)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, C, L, 4, 4, generator=g)
    noise = torch.randn(1, C, L, 4, 4, generator=g)
    windows = latent_windows(L, 4, 1)  # window 16 video frames, overlap 4
    expected = {window: slice_conditions(cond, *window, L) for window in windows}
    seen = []

    def model_fn(x, t, c):
        (a, b), *others = [
            w
            for w, e in expected.items()
            if e.points.shape == c.points.shape and torch.equal(e.points, c.points)
        ]
        assert not others and x.shape[2] == b - a
        start, stop = video_frame_range(a, b)
        assert torch.equal(c.points, cond.points[:, :, start:stop])
        assert torch.equal(c.K, cond.K[:, start:stop]) and torch.equal(c.R, cond.R[:, start:stop])
        assert torch.equal(c.t, cond.t[:, start:stop])
        assert torch.equal(c.background_latent, cond.background_latent[:, :, a:b])
        assert c.ref_latent is cond.ref_latent and c.ref_points is cond.ref_points
        seen.append((a, b))
        return exact_field(x0[:, :, a:b])(x, t, c)

    out = sample_long(
        model_fn, noise, cond, strategy, window_frames=16, overlap_frames=4, num_steps=4, guidance_scale=1.0
    )
    assert torch.allclose(out, x0, atol=1e-5)
    assert set(seen) == set(windows)


def test_prefix_keeps_the_carried_latents_fixed() -> None:
    """With a model that ignores the truth, later windows must not rewrite the frames they share."""
    L = 9
    cond = make_conditions(B=1, P=1, T=33, N=4, h=4, w=4)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1, C, L, 4, 4, generator=g)
    calls = []

    def model_fn(x, t, c):
        calls.append(x.clone())
        return torch.sin(3 * x) + t.view(-1, 1, 1, 1, 1)

    out = sample_long(
        model_fn, noise, cond, "prefix", window_frames=16, overlap_frames=8, num_steps=3, guidance_scale=1.0
    )
    first = euler_sample(
        model_fn, noise[:, :, :4], slice_conditions(cond, 0, 4, L), num_steps=3, guidance_scale=1.0
    )
    assert torch.equal(out[:, :, :4], first)
    # Window 2 = latent [2, 6) carries latents 2, 3 as prefix: returned exactly, and at every step the
    # model saw them clean (the default, as DiTModule trains its windows).
    prefix = first[:, :, 2:4]
    window_calls = calls[3:6]  # window 0 made calls 0-2
    for x in window_calls:
        assert torch.equal(x[:, :, :2], prefix)
    again = euler_sample(
        model_fn,
        noise[:, :, 2:6],
        slice_conditions(cond, 2, 6, L),
        num_steps=3,
        guidance_scale=1.0,
        prefix=prefix,
    )
    assert torch.equal(again[:, :, :2], prefix)
    assert torch.equal(out[:, :, 4:6], again[:, :, 2:])
    calls.clear()
    noisy = euler_sample(
        model_fn, noise[:, :, 2:6], None, num_steps=3, guidance_scale=1.0, prefix=prefix, prefix_clean=False
    )
    assert torch.equal(noisy[:, :, :2], prefix)
    for step, x in enumerate(calls):  # the prefix on the noise path (1 - t) prefix + t ε instead
        t = float(sampling_times(3, 3.0)[step])
        assert torch.allclose(x[:, :, :2], (1 - t) * prefix + t * noise[:, :, 2:4], atol=1e-6)


def test_clean_prefix_training_input_is_the_sampling_input() -> None:
    """`flow_matching_loss(clean_prefix=n)` shows the model what `euler_sample(prefix=...)` shows it at the
    same t: the n prefix frames clean, the others on the path; the prefix frames carry no loss."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, C, 5, 4, 4, generator=g), torch.randn(2, C, 5, 4, 4, generator=g)
    t = torch.full((2,), 1.0)  # the first sampling step
    seen = {}

    def model_fn(x, t, cond):
        seen.setdefault("x", []).append(x.clone())
        return torch.zeros_like(x)

    loss = flow_matching_loss(model_fn, x0, None, t=t, noise=noise, clean_prefix=2)
    euler_sample(model_fn, noise, None, num_steps=1, guidance_scale=1.0, prefix=x0[:, :, :2])
    trained, sampled = seen["x"]
    assert torch.equal(trained, sampled)
    assert torch.equal(trained[:, :, :2], x0[:, :, :2]) and torch.equal(trained[:, :, 2:], noise[:, :, 2:])
    assert torch.allclose(loss, (noise - x0)[:, :, 2:].square().mean())  # the prefix frames carry no loss
    with pytest.raises(ValueError, match="clean_prefix"):
        flow_matching_loss(model_fn, x0, None, clean_prefix=5)


def test_sampling_unconditional_pass_is_a_trained_drop_mode() -> None:
    """The CFG unconditional pass drops exactly what the joint training drop (p_all) drops, and the
    default recipe trains that mode ~10 % of the time (independent drops alone: 0.1 %)."""
    cond = make_conditions(B=1, N=8, h=8, w=8)
    seen = []

    def model_fn(x, t, c):
        seen.append(c)
        return torch.zeros_like(x)

    x = torch.randn(1, C, 3, 8, 8)
    guided_velocity(model_fn, x, torch.full((1,), 0.5), cond, guidance_scale=2.0)
    sampling_uncond = seen[-1]
    flow = FlowMatching()  # the defaults = conf/model/dit_*.yaml
    FlowMatching(p_drop_ref=0.0, p_drop_smpl=0.0, p_drop_camera=0.0, p_drop_all=1.0).loss(model_fn, x, cond)
    trained_uncond = seen[-1]
    for name in ("ref", "smpl", "camera"):
        assert torch.equal(trained_uncond.drop_flags(name), sampling_uncond.drop_flags(name))
        assert sampling_uncond.drop_flags(name).all()
    with torch.no_grad():  # a model whose every weight is random computes the same thing for both
        torch.manual_seed(0)
        model = dit_tiny().eval()
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.05)
        t = torch.full((1,), 0.5)
        uncond = model(x, t, sampling_uncond)
        torch.testing.assert_close(model(x, t, trained_uncond), uncond)
        assert not torch.allclose(model(x, t, cond), uncond, atol=1e-4)  # and the conditions matter
    flags = draw_condition_drops(
        200_000,
        flow.p_drop_ref,
        flow.p_drop_smpl,
        flow.p_drop_camera,
        flow.p_drop_all,
        torch.Generator().manual_seed(0),
    )
    everything = (flags["ref"] & flags["smpl"] & flags["camera"]).float().mean()
    assert flow.p_drop_all >= 0.05 and abs(everything - (flow.p_drop_all + 0.9 * 0.001)) < 0.003


def test_sampling_the_tiny_model_with_cfg() -> None:
    model = dit_tiny().eval()
    cond = make_conditions(B=1, N=8, h=8, w=8)
    with torch.no_grad():
        out = euler_sample(model, torch.randn(1, C, 3, 8, 8), cond, num_steps=1, guidance_scale=2.0)
    assert out.shape == (1, C, 3, 8, 8) and torch.isfinite(out).all()


@pytest.mark.slow
def test_overfitting_one_clip_drives_the_flow_loss_down() -> None:
    """Training `tiny` on one clip brings the flow loss (fixed evaluation noise and times) below a fifth
    of its initial value (about 2: E|ε - x0|²) within 300 steps; stops as soon as it does."""
    torch.manual_seed(0)
    model = dit_tiny().train()
    cond = make_conditions(B=1, P=1, T=5, N=16, h=8, w=8)
    x0 = torch.randn(1, C, 2, 8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    evaluation = torch.Generator().manual_seed(123)
    eval_t = sample_logit_normal(32, generator=evaluation)
    eval_noise = torch.randn(32, C, 2, 8, 8, generator=evaluation)
    eval_cond, train_cond = repeat(cond, 32), repeat(cond, 4)

    def evaluate() -> float:
        with torch.no_grad():
            x = x0.expand(32, -1, -1, -1, -1)
            return flow_matching_loss(model, x, eval_cond, t=eval_t, noise=eval_noise).item()

    start = end = evaluate()
    began = time.time()
    for step in range(1, 301):
        optimizer.zero_grad()
        flow_matching_loss(model, x0.expand(4, -1, -1, -1, -1), train_cond, g).backward()
        optimizer.step()
        if step % 25 == 0:
            end = evaluate()
            if end < 0.2 * start or time.time() - began > 150:
                break
    assert start > 1.5
    assert end < 0.2 * start, (start, end, step)
