"""`python -m isa4d.bench.attention`: analytic FLOPs = FlopCounterMode, slopes, crossovers, the driver."""

from __future__ import annotations

import json
import math

import pytest
import torch
from einops import rearrange
from torch.utils.flop_counter import FlopCounterMode

from isa4d.bench import attention as bench
from isa4d.bench.steps import CPU_ATTENTION_FLOPS
from isa4d.geometry import project_points
from isa4d.models.dit import ISADiT, build_dit

aten = torch.ops.aten


def _counted(model: torch.nn.Module, frames: int, resolution: int, persons: int, points: int, train: bool):
    cond = bench.synthetic_conditions(frames, resolution, persons, points, batch=2)
    h = resolution // 8
    x = torch.randn(2, 16, (frames + 3) // 4, h, h)
    with FlopCounterMode(display=False, depth=None, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        out = model(x, torch.rand(2), cond)
        if train:
            out.square().mean().backward()
    return {name.removeprefix("ISADiT."): sum(c.values()) for name, c in counter.get_flop_counts().items()}


@pytest.mark.parametrize("variant", list(bench.VARIANTS))
def test_analytic_flops_equal_flop_counter_per_module(variant: str) -> None:
    """Forward FLOPs of every module (each layer's blocks, embedders, image encoder, final layer) equal
    FlopCounterMode's exactly; the totals, forward and forward + backward, agree to 1e-4 (the analytic
    count leaves out the few 4×4 camera matmuls)."""
    frames, resolution, persons, points = 9, 64, 2, 8
    model = build_dit("tiny", use_canonical=variant == "cross_pair", **bench.VARIANTS[variant]).train()
    analytic = bench.analytic_flops(model.config, frames, resolution, 2, persons, points)
    forward = _counted(model, frames, resolution, persons, points, train=False)
    modules: dict[str, list[int]] = {}
    for name, (f, t) in analytic.items():  # the ISA block's 3-D and 2-D sides are one module
        entry = modules.setdefault(name.removesuffix(".3d").removesuffix(".2d"), [0, 0])
        entry[0], entry[1] = entry[0] + f, entry[1] + t
    assert {name: f for name, (f, _) in modules.items()} == {name: forward[name] for name in modules}
    layer_blocks = {name.split(".")[2] for name in modules if name.startswith("layers.")}
    expected = {"cross", "point_temporal", "isa"} if model.branch_3d else {"cross", "isa_2d"}
    expected |= {"spatio_temporal"} if variant.startswith("full") else {"spatial", "temporal"}
    assert layer_blocks == expected
    train = _counted(model, frames, resolution, persons, points, train=True)
    assert sum(f for f, _ in modules.values()) == pytest.approx(forward["Global"], rel=1e-4)
    assert sum(t for _, t in modules.values()) == pytest.approx(train["Global"], rel=1e-4)


def test_flop_parts_and_the_paper_shape() -> None:
    """Parts add up to the total; at the paper's shape full attention costs more than ISA, and one
    3-D frame per latent frame cuts the 3-D branch by close to 4x."""
    row = bench.analytic_row(
        "paper4b",
        97,
        512,
        1,
        256,
        {("paper4b", v): bench.model_config("paper4b", v) for v in bench.VARIANTS},
    )
    assert (row["latent_frames"], row["tokens_2d"], row["tokens_3d"]) == (25, 25 * 32 * 32, 97 * 256)
    for x in row["variants"].values():
        parts = x["parts"]
        assert parts["total"] == sum(v for k, v in parts.items() if k != "total") == x["train_flops"]
    ratios = row["ratio_to_full"]
    assert ratios["full"] == 1.0 and 0.2 < ratios["cross_pair"] < ratios["joint"] < 1.0
    share = {v: row["variants"][v]["parts"]["3d_branch"] for v in ("cross_pair", "cross_pair_p1")}
    assert 3.5 < share["cross_pair"] / share["cross_pair_p1"] < 4.0  # 97 frames -> 25 (+ reference features)
    assert row["variants"]["no_3d"]["parts"]["3d_branch"] == 0


def test_loglog_slope_and_crossover() -> None:
    fit = bench.loglog_slope([10, 20, 40, 80], [3 * x**2 for x in (10, 20, 40, 80)])
    assert fit["slope"] == pytest.approx(2.0) and fit["r2"] == pytest.approx(1.0) and fit["points"] == 4
    assert bench.loglog_slope([5, 5], [1, 2]) is None
    found = bench.crossover([400, 100, 200], [0.5, 2.0, 1.5])  # unsorted on purpose
    f = math.log(1.5) / (math.log(1.5) - math.log(0.5))
    assert found["kind"] == "crossing" and found["tokens"] == pytest.approx(200 * 2**f)
    assert bench.crossover([100, 200], [0.9, 0.5]) == {"kind": "always", "tokens": None}
    assert bench.crossover([100, 200], [1.2, 1.1]) == {"kind": "never", "tokens": None}


def test_synthetic_conditions_are_valid_and_in_view() -> None:
    cond = bench.synthetic_conditions(9, 64, persons=2, num_points=16)
    cond.validate(torch.zeros(1, 16, 3, 8, 8))
    points = rearrange(cond.points[0], "p t n c -> t (p n) c")  # every frame with its own camera
    uv, depth = project_points(points, cond.K[0], cond.R[0], cond.t[0])
    assert (depth > 0).all() and ((uv > 0) & (uv < 64)).all()


def test_worker_measures_each_variant() -> None:
    """One cell's variants in one process: a time per step and a memory peak each."""
    spec = {
        "width": "tiny",
        "variants": ["cross_pair", "full"],
        "frames": 5,
        "resolution": 32,
        "persons": 1,
        "num_points": 8,
        "device": "cpu",
        "dtype": "fp32",
        "repeats": 1,
        "threads": 1,
    }
    results = bench.run_worker(spec)
    assert list(results) == ["cross_pair", "full"]
    for result in results.values():
        assert result["step_s"] > 0 and result["step_s"] == min(result["times_s"])
        assert result["peak_mib"] is None or result["peak_mib"] >= 0
    assert results["full"]["parameters"] < results["cross_pair"]["parameters"]


def test_compile_option_compiles_the_layers_and_skips_the_warm_up(monkeypatch) -> None:
    """`--compile`: every variant's model goes through `compile_blocks` once, at the cell's shape only (a
    warm-up at another shape would compile twice)."""
    shapes = []
    monkeypatch.setattr(ISADiT, "compile_blocks", lambda model: shapes.append(None))
    real_conditions = bench.synthetic_conditions

    def conditions(frames: int, resolution: int, *args, **kwargs):
        shapes.append((frames, resolution))
        return real_conditions(frames, resolution, *args, **kwargs)

    monkeypatch.setattr(bench, "synthetic_conditions", conditions)
    spec = {"width": "tiny", "variants": ["cross_pair", "full"], "frames": 5, "resolution": 32, "persons": 1}
    spec |= {"num_points": 8, "device": "cpu", "dtype": "fp32", "repeats": 1, "threads": 1, "compile": True}
    results = bench.run_worker(spec)
    assert shapes == [None, (5, 32), None, (5, 32)]
    assert all(result["step_s"] > 0 for result in results.values())
    assert bench.parse_args(["--compile"]).compile and not bench.parse_args([]).compile


def test_cells_over_the_step_budget_are_skipped_and_reported(tmp_path) -> None:
    """With no time for any step every cell is skipped, listed with its reason, and the analytic tables
    (the whole grid, the paper shape) are still written."""
    args = bench.parse_args(
        [
            "--widths",
            "tiny",
            "--frames",
            "17",
            "--resolutions",
            "64",
            "--max-step-s",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    report = bench.run(args)
    assert [r["variant"] for r in report["measured"]] == args.variants
    assert all("--max-step-s 0" in r["skipped"] and "step_s" not in r for r in report["measured"])
    grid = len(bench.WIDTHS) * len(bench.DEFAULT_FRAMES) * len(bench.DEFAULT_RESOLUTIONS)
    assert len(report["analytic"]) == grid
    assert report["paper_shape"]["width"] == "paper4b" and report["paper_shape"]["frames"] == 97
    written = json.loads((tmp_path / "attention.json").read_text())
    assert written["paper_shape"]["ratio_to_full"] == report["paper_shape"]["ratio_to_full"]
    text = (tmp_path / "attention.md").read_text()
    assert "## Cells not measured" in text and "tiny T=17 64² `joint`" in text
    assert f"`cross_pair` {report['paper_shape']['ratio_to_full']['cross_pair']:.3f}" in text


@pytest.mark.parametrize("argv", [["--frames", "18"], ["--resolutions", "40"], ["--repeats", "0"]])
def test_bad_grid_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


@pytest.mark.slow
def test_bench_measures_a_small_grid_end_to_end(tmp_path) -> None:
    """`python -m isa4d.bench.attention` on two tiny cells: subprocess workers, ratios, slopes, report."""
    bench.main(
        ["--widths", "tiny", "--frames", "5", "9", "--resolutions", "32", "--variants", "cross_pair", "full",
         "no_3d", "--num-points", "8", "--repeats", "1", "--out", str(tmp_path)]
    )  # fmt: skip
    report = json.loads((tmp_path / "attention.json").read_text())
    assert all(r["step_s"] > 0 for r in report["measured"]), report["measured"]
    cells = report["summary"]["cells"]
    assert len(cells) == 2 and all(c["cross_pair/full"] > 0 and c["share_3d"] is not None for c in cells)
    assert report["summary"]["slopes"]["measured"]["tiny"]["full"]["points"] == 2
    assert "## Measured cells" in (tmp_path / "attention.md").read_text()
