"""The training-step profiler (`python -m isa4d.bench.steps`): FLOP counting, phase timing, a tiny run."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from dit_fixtures import FRAMES, SIZE, human_shards, vae_ckpt
from isa4d.bench import steps

__all__ = ["human_shards", "vae_ckpt"]  # fixtures


def test_linear_flops_match_the_formula():
    batch, d_in, d_out = 8, 32, 24
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in, requires_grad=True)
    counted = steps.count_flops(lambda: layer(x).sum().backward())
    assert counted == steps.linear_flops(batch, d_in, d_out) == 6 * batch * d_in * d_out
    assert steps.count_flops(lambda: layer(x)) == steps.linear_flops(batch, d_in, d_out, backward=False)


def test_phase_timer_is_exclusive_and_adds_up():
    timer = steps.PhaseTimer()
    start = time.perf_counter()
    with timer.phase("outer"):
        time.sleep(0.01)
        with timer.phase("inner"):
            time.sleep(0.02)
        with timer.phase("inner"):
            time.sleep(0.01)
    total = time.perf_counter() - start
    assert timer.calls == {"outer": 1, "inner": 2}
    assert timer.times["inner"] >= 0.03 and 0.01 <= timer.times["outer"] < 0.02
    assert sum(timer.times.values()) == pytest.approx(total, abs=2e-3)


def test_wrap_times_a_method_and_restores_it():
    timer = steps.PhaseTimer()
    layer = nn.Linear(4, 4)
    import contextlib

    with contextlib.ExitStack() as stack:
        assert timer.wrap(stack, layer, "forward", "linear")
        assert not timer.wrap(stack, layer, "missing", "nothing")
        layer(torch.randn(2, 4))
    assert timer.calls == {"linear": 1}
    assert "forward" not in vars(layer)
    layer(torch.randn(2, 4))
    assert timer.calls == {"linear": 1}


def test_top_ops_table():
    a = torch.randn(64, 64)
    table = steps.top_ops(lambda index: torch.mm(a, a).sum(), 0, 3)
    assert "aten::mm" in table


def test_profile_tiny_stages(tmp_path, human_shards, vae_ckpt):
    data = [
        f"data.train_dirs=[{human_shards}]",
        f"data.val_dirs=[{human_shards}]",
        "data.train_splits=[train]",
        "data.val_splits=[video]",
        f"data.num_frames={FRAMES}",
        f"data.resolution={SIZE}",
        "data.num_workers=0",
    ]
    small_dit = ["+model.dit.hidden_size=64", "+model.dit.depth=1", "+model.dit.num_heads=2"]  # fast
    argv = [
        "--warmup=0",
        "--steps=1",
        "--top-ops=0",
        "--peak-size=256",
        "--peak-repeats=2",
        f"--vae-ckpt={vae_ckpt}",
        f"--out={tmp_path}",
        *(
            f"--vae-override={o}"
            for o in [
                *data,
                "data.train_weights=null",
                "data.image_prob=0",
                "model.loss.disc_start=5",
            ]
        ),
        *(
            f"--dit-override={o}"
            for o in ["data=human", *data, "model.num_points=64", "model.window_latents=null", *small_dit]
        ),
        "--dit-compare=model.num_points=32",  # a second DiT step in the same run, compared with the first
    ]
    report = steps.main(argv)
    assert json.loads((tmp_path / "steps.json").read_text())["fraction_in_dit"] == report["fraction_in_dit"]
    text = (tmp_path / "steps.md").read_text()
    assert "Stage 2: DiT step" in text and "fraction_in_dit" in text and "MFU" in text
    compare = report["dit_compare"]
    assert compare["overrides"] == ["model.num_points=32"]
    assert compare["speedup"] == pytest.approx(compare["step_ms"] / report["dit"]["step_ms"])
    assert "The same DiT step with `model.num_points=32`, measured in this run" in text

    before, after = report["vae"]
    dit = report["dit"]
    for summary in (before, after, dit):
        (step,) = summary["steps_s"]  # one measured step: phases sum to its total
        phases = sum(v for k, v in step.items() if k != "total_s")
        assert phases == pytest.approx(step["total_s"], rel=0.02, abs=2e-3)
        assert summary["sum_of_phase_medians_ms"] == pytest.approx(summary["step_ms"], rel=0.02, abs=2)
        assert summary["flops"]["forward_backward_gflop"] > 0 and 0 < summary["flops"]["mfu"]
        assert summary["steps_info"][0]["frames"] == FRAMES

    def present(summary):
        return {row["key"] for row in summary["phases"] if row["present"]}

    common = {
        "data",
        "encoder",
        "decoder",
        "g_loss",
        "aux_decoder",
        "g_backward",
        "g_clip",
        "g_step",
        "d_step",
    }
    assert common <= present(before) and not {"disc_fwd_g", "adaptive_weight", "d_backward"} & present(before)
    assert common | {"disc_fwd_g", "disc_fwd_d", "adaptive_weight", "d_backward", "d_clip"} <= present(after)
    assert after["disc_active"] and not before["disc_active"]
    assert {"data", "encode_video", "encode_cond", "body", "dit_forward", "dit_backward", "step"} <= present(
        dit
    )
    assert "render" not in present(dit)  # the ISA model renders no control video
    assert 0 < report["fraction_in_dit"] < 1
    assert dit["vae_ckpt"] == str(vae_ckpt)
