"""`make ablate`: the sweep configs compose, and `isa4d ablate-report` on fabricated sweep folders.

Run folders are written as the real runs write them: `.hydra/config.yaml` from the composed config,
`.hydra/hydra.yaml` with the variant choice, `csv/metrics.csv` by Lightning's own CSVLogger.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from scipy.stats import ttest_1samp, ttest_ind, ttest_rel

from conftest import compose_for_test
from isa4d.ablate import build_report
from isa4d.cli import build_parser
from isa4d.config import config_dir
from isa4d.errors import ISA4DError

VARIANTS = sorted(path.stem for path in (config_dir() / "variant").glob("*.yaml"))
SWEEP = ["experiment=dit_ablate_cpu", "model.vae_ckpt=/nowhere/vae.ckpt"]
STEPS = 4  # fabricated runs: validations after steps 2 and 4
ISA_PARAMETERS = 3_165_872  # docs/baselines.md, "Sizes"


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("variant", VARIANTS)
def test_sweep_config_composes_for_every_variant(variant, tmp_path):
    cfg = compose_for_test("train_dit", tmp_path, [*SWEEP, f"+variant={variant}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    variant_options = OmegaConf.load(config_dir() / "variant" / f"{variant}.yaml")
    assert OmegaConf.masked_copy(cfg.model.dit, list(variant_options)) == variant_options
    assert resolved["trainer"]["max_steps"] % resolved["data"]["epoch_size"] == 0  # a validation at the end
    assert (
        resolved["callbacks"]["model_checkpoint"]["every_n_train_steps"] == resolved["trainer"]["max_steps"]
    )
    assert resolved["callbacks"]["dit_samples"] is None and "csv" in resolved["logger"]
    params = HydraConfig.get().sweeper.params
    assert sorted(params["+variant"].split(",")) == VARIANTS  # every variant of conf/variant/ is swept
    assert len(params["seed"].split(",")) >= 2  # seed noise needs two seeds at least


def test_tiny_no_reg_vae_only_drops_the_regularisation(tmp_path):
    reg = OmegaConf.to_container(compose_for_test("train_vae", tmp_path, ["experiment=vae_tiny_cpu"]))
    no_reg = OmegaConf.to_container(
        compose_for_test("train_vae", tmp_path, ["experiment=vae_tiny_cpu_no_reg"])
    )
    assert (
        no_reg["model"]["loss"].pop("aux_decoder") is None and no_reg["model"]["loss"].pop("reg_weight") == 0
    )
    del reg["model"]["loss"]["aux_decoder"], reg["model"]["loss"]["reg_weight"], reg["tags"], no_reg["tags"]
    assert no_reg == reg


def test_report_command_is_registered():
    args = build_parser().parse_args(["ablate-report", "logs/ablate/x", "--out", "out"])
    assert callable(args.func) and args.out == Path("out")


# ---------------------------------------------------------------------------------------------- report


def write_dit_run(
    dit: Path, tmp_path: Path, variant: str, seed: int, losses: list[float] | None, wall_s: float = 60.0
) -> Path:
    """A job folder of the DiT sweep; `losses`: val/flow_loss after steps 2, 4, ... (None: no metrics)."""
    folder = dit / f"{variant}_seed{seed}"
    cfg = compose_for_test(
        "train_dit", tmp_path, [*SWEEP, f"+variant={variant}", f"seed={seed}", f"trainer.max_steps={STEPS}"]
    )
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    OmegaConf.save(
        {"hydra": {"runtime": {"choices": {"variant": variant}}}}, folder / ".hydra" / "hydra.yaml"
    )
    if losses is None:
        return folder
    logger = CSVLogger(str(folder), name="csv", version="")
    for step in range(STEPS):
        logger.log_metrics({"train/loss": 2.0 - 0.1 * step, "epoch": step // 2}, step=step)
        if step % 2 == 1 and losses:  # Lightning logs the validation after batch n with step n - 1
            logger.log_metrics({"val/flow_loss": losses.pop(0), "epoch": step // 2}, step=step)
    logger.save()
    start = (folder / ".hydra" / "config.yaml").stat().st_mtime
    os.utime(folder / "csv" / "metrics.csv", (start + wall_s, start + wall_s))
    return folder


def write_pose(folder: Path, clips: list[float], clips_no_body: list[float]) -> None:
    """The `eval/dit_eval.json` of `isa4d evaluate mode=dit` on the `video` split (its layout): the fg
    IoU of each clip with the body and with it dropped, and their means."""

    def split(ious: list[float]) -> dict:
        video = {"psnr": 20.0, "fg_iou": float(np.mean(ious)), "fg_iou_clips": ious, "psnr_fg": 13.0}
        return {"video": {**video, "psnr_bg": 21.0}}

    report = {
        "mode": "dit",
        "results": split(clips),
        "references": [
            {"model": "GT through VAE (upper bound)", "results": split([0.5] * len(clips))},
            {"model": "body dropped (lower bound)", "results": split(clips_no_body)},
        ],
    }
    (folder / "eval").mkdir()
    (folder / "eval" / "dit_eval.json").write_text(json.dumps(report))


def write_vae_run(folder: Path, std: float, sensitivity: list[float], psnr: float | None) -> None:
    """A VAE run folder with the two diagnostics' JSON files (the callbacks' format) and val/psnr."""
    folder.mkdir(parents=True)
    values = np.random.default_rng(0).normal(0.1, std, 5000)
    counts, edges = np.histogram(values, bins=50)
    stats = {
        "shift": 0.1,
        "scale": 1 / std,
        "mean": 0.1,
        "std": std,
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist(), "num_values": 5000},
    }
    (folder / "latent_stats.json").write_text(json.dumps(stats))
    entry = lambda value: {"recon_l1": 0.2, "perturbed_l1": 0.21, "sensitivity": value}  # noqa: E731
    bias = {
        "global_step": 4,
        "num_clips": 2,
        "noise": 0.5,
        "frame_0": entry(sensitivity[0]),
        "positions": [{"position": j, **entry(value)} for j, value in enumerate(sensitivity[1:])],
    }
    (folder / "last_frame_bias.json").write_text(json.dumps(bias))
    if psnr is not None:
        logger = CSVLogger(str(folder), name="csv", version="")
        logger.log_metrics({"val/psnr": psnr - 1.0, "epoch": 0}, step=49)
        logger.log_metrics({"val/psnr": psnr, "epoch": 1}, step=99)
        logger.save()


def test_report_tables_plots_and_failed_runs(tmp_path):
    sweep = tmp_path / "sweep"
    dit = sweep / "dit"
    dit.mkdir(parents=True)
    OmegaConf.save(
        {
            "hydra": {
                "sweeper": {"params": {"seed": "1,2,3", "+variant": "isa,isa_no_pe,padaln_pose"}},
                # as typed: an interpolation in an override must not be resolved
                "overrides": {"task": [*SWEEP, "+trainer.profiler.dirpath=${paths.output_dir}"]},
            }
        },
        dit / "multirun.yaml",
    )
    finals = {"isa": [0.50, 0.52, 0.49], "isa_no_pe": [0.70, 0.74]}
    # fg IoU of 2 clips per seed, with the body and with it dropped
    clips = {
        "isa": ([[0.28, 0.32], [0.33, 0.35], [0.30, 0.34]], [[0.10, 0.10], [0.12, 0.10], [0.09, 0.11]]),
        "isa_no_pe": ([[0.11, 0.13], [0.10, 0.10]], [[0.10, 0.12], [0.13, 0.11]]),
    }
    ious = {name: tuple(np.mean(runs, axis=1).tolist() for runs in pair) for name, pair in clips.items()}
    for seed, value in enumerate(finals["isa"], 1):
        folder = write_dit_run(dit, tmp_path, "isa", seed, [0.9, value], wall_s=120.0)
        write_pose(folder, clips["isa"][0][seed - 1], clips["isa"][1][seed - 1])
    for seed, value in enumerate(finals["isa_no_pe"], 1):
        folder = write_dit_run(dit, tmp_path, "isa_no_pe", seed, [0.95, value])
        write_pose(folder, clips["isa_no_pe"][0][seed - 1], clips["isa_no_pe"][1][seed - 1])
    write_dit_run(dit, tmp_path, "isa_no_pe", 3, None)  # crashed before logging
    write_dit_run(dit, tmp_path, "padaln_pose", 1, [0.8, 0.6])
    write_dit_run(dit, tmp_path, "padaln_pose", 2, [0.8])  # stopped after the first validation
    # padaln_pose seed 3: no folder at all (the sweep was interrupted)
    write_vae_run(sweep / "vae_reg", 0.5, [0.04, 0.001, 0.001, 0.001, 0.001], psnr=24.5)
    write_vae_run(sweep / "vae_no_reg", 0.8, [0.05, 0.001, 0.002, 0.003, 0.004], psnr=None)
    out = tmp_path / "out"
    (out).mkdir()
    report = build_report(sweep, out)

    rows = {row["variant"]: row for row in report["dit"]["variants"]}
    assert [row["variant"] for row in report["dit"]["variants"]] == ["isa", "padaln_pose", "isa_no_pe"]
    for name, values in finals.items():
        assert rows[name]["final_mean"] == pytest.approx(np.mean(values))
        assert rows[name]["final_std"] == pytest.approx(np.std(values, ddof=1))
    assert rows["isa"]["best"] == pytest.approx(0.49) and rows["isa"]["steps"] == [STEPS]
    assert rows["isa"]["parameters"] == ISA_PARAMETERS and rows["isa"]["wall_s_mean"] == pytest.approx(
        120, abs=1
    )
    assert rows["isa_no_pe"]["p_vs_best"] == pytest.approx(
        ttest_ind(finals["isa_no_pe"], finals["isa"], equal_var=False).pvalue
    )
    paired = ttest_rel(finals["isa_no_pe"], finals["isa"][:2]).pvalue  # seeds 1 and 2, the ones both have
    assert rows["isa_no_pe"]["p_paired_vs_best"] == pytest.approx(paired)
    assert rows["padaln_pose"]["p_paired_vs_best"] is None  # a single common seed
    assert rows["isa_no_pe"]["seeds"] == [1, 2] and rows["isa_no_pe"]["failed_seeds"] == [3]
    for name, (model, no_body) in ious.items():  # pose following: IoU, and what the body adds per seed
        gains = np.subtract(model, no_body)
        assert rows[name]["fg_iou_mean"] == pytest.approx(np.mean(model))
        assert rows[name]["body_gain_mean"] == pytest.approx(np.mean(gains))
        assert rows[name]["body_gain_p"] == pytest.approx(ttest_1samp(gains, 0.0).pvalue)
        clip_gains = np.subtract(clips[name][0], clips[name][1]).ravel()  # every seed's clips pooled
        assert rows[name]["body_gain_p_clips"] == pytest.approx(ttest_1samp(clip_gains, 0.0).pvalue)
    # fg IoU against the highest (isa), paired over the (seed, clip) pairs both have: seeds 1 and 2
    both = np.subtract(clips["isa_no_pe"][0], clips["isa"][0][:2]).ravel()
    assert rows["isa_no_pe"]["fg_iou_p_vs_top"] == pytest.approx(ttest_1samp(both, 0.0).pvalue)
    assert rows["isa_no_pe"]["fg_iou_vs_top"] == "isa" and rows["isa"]["fg_iou_p_vs_top"] is None
    assert rows["padaln_pose"]["fg_iou_mean"] is None  # not evaluated
    assert rows["padaln_pose"]["final_std"] is None and rows["padaln_pose"]["failed_seeds"] == [2, 3]
    statuses = {(run["variant"], run["seed"]): run for run in report["dit"]["runs"]}
    assert len(statuses) == 9 and statuses[("isa", 2)]["curve"] == [[2, 0.9], [4, 0.52]]
    assert "no csv/metrics.csv" in statuses[("isa_no_pe", 3)]["error"]
    assert "last validation after step 2 of 4" in statuses[("padaln_pose", 2)]["error"]
    assert (
        statuses[("padaln_pose", 3)]["error"].startswith("missing")
        and statuses[("padaln_pose", 3)]["folder"] is None
    )

    text = (out / "RESULTS.md").read_text()
    assert f"| 1 | `isa` | 1, 2, 3 | {STEPS} | 0.5033 ± 0.0153 |" in text
    assert f"| 3 | `isa_no_pe` | 1, 2 (failed: 3) | {STEPS} | 0.7200 ± 0.0283 | +0.2167 |" in text
    assert "| 2 | `padaln_pose` | 1 (failed: 2, 3) | 4 | 0.6000 |" in text
    assert f"{ISA_PARAMETERS:,}" in text and "2.0 min (30.00 s/step)" in text
    assert "seed noise for `isa_no_pe`; not testable for `padaln_pose` (a single completed seed)" in text
    p_seeds, p_clips = rows["isa"]["body_gain_p"], rows["isa"]["body_gain_p_clips"]
    assert f"| 0.4900 | 0.320 ± 0.020 | +0.217 ± 0.015 ({p_seeds:.3g}; {p_clips:.3g}) |" in text  # isa
    p_top = rows["isa_no_pe"]["fg_iou_p_vs_top"]
    assert f"| 0.110 ± 0.014 ({p_top:.3g}) | -0.005 ± 0.021 (" in text  # isa_no_pe: fg IoU vs isa's
    assert "beyond the seed noise (p < 0.05) for `isa`;" in text  # not isa_no_pe: its gain is -0.005 ± 0.021
    assert "lower beyond that noise for `isa_no_pe`" in text and p_top < 0.05
    assert text.count("\n- `") == 3  # the three failed runs, each with its reason
    assert "| 24.50 | 0.1000 | 0.5000 |" in text and "| n/a | 0.1000 | 0.8000 |" in text  # VAE rows
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(report))
    for name in ("val_loss.png", "vae_latent_hist.png", "vae_last_frame_bias.png"):
        assert (out / name).stat().st_size > 1000
    assert not list(out.glob(".*"))  # atomic writes leave no temporary files


def test_noise_sentence_and_empty_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, (a, b) in enumerate([(0.50, 0.90), (0.51, 0.91), (0.49, 0.92)], 1):
        write_dit_run(sweep / "dit", tmp_path, "isa", seed, [1.0, a])
        write_dit_run(sweep / "dit", tmp_path, "concat_render", seed, [1.0, b])
    out = tmp_path / "out"
    build_report(sweep, out)
    assert (
        "finds the difference larger than the seed noise for `concat_render`."
        in (out / "RESULTS.md").read_text()
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    build_report(empty, out)  # also removes the figures of the previous report
    text = (out / "RESULTS.md").read_text()
    assert "0 of 0 runs completed" in text and "**missing**" in text
    assert not (out / "val_loss.png").exists() and not (out / "vae_latent_hist.png").exists()


def test_report_reads_every_dit_sweep_folder_and_refuses_a_job_twice(tmp_path):
    """`make ablate ABLATE_LANES=2`: seeds split over dit_lane0/ and dit_lane1/, each with its own grid."""
    sweep = tmp_path / "sweep"
    for lane, seeds in enumerate(("1,3", "2")):
        dit = sweep / f"dit_lane{lane}"
        dit.mkdir(parents=True)
        grid = {"seed": seeds, "+variant": "isa,concat_render"}
        OmegaConf.save(
            {"hydra": {"sweeper": {"params": grid}, "overrides": {"task": SWEEP}}}, dit / "multirun.yaml"
        )
    finals = {1: 0.50, 2: 0.53, 3: 0.49}
    for seed, value in finals.items():
        write_dit_run(sweep / f"dit_lane{(seed - 1) % 2}", tmp_path, "isa", seed, [1.0, value])
    write_dit_run(sweep / "dit_lane0", tmp_path, "concat_render", 1, [1.0, 0.6])
    (sweep / "dit_lane0.log").write_text("a lane's output, not a sweep folder")
    out = tmp_path / "out"
    report = build_report(sweep, out)
    rows = {row["variant"]: row for row in report["dit"]["variants"]}
    assert rows["isa"]["seeds"] == [1, 2, 3]
    assert rows["isa"]["final_mean"] == pytest.approx(np.mean(list(finals.values())))
    missing = sorted(run["seed"] for run in report["dit"]["runs"] if run["folder"] is None)
    assert missing == [2, 3] and rows["concat_render"]["failed_seeds"] == [2, 3]  # one from each grid

    write_dit_run(sweep / "dit", tmp_path, "isa", 2, [1.0, 0.4])  # seed 2 again in a third folder
    with pytest.raises(ISA4DError, match="isa seed 2 is in two DiT sweep folders"):
        build_report(sweep, out)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(report))  # kept
