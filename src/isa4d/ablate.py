"""The report of `make ablate` (docs/ablation.md): `isa4d ablate-report SWEEP [--out DIR]`.

Reads an ablation sweep folder laid out as `make ablate` writes it:

    SWEEP/vae_reg/, SWEEP/vae_no_reg/   isa4d train-vae runs (vae_tiny_cpu, vae_tiny_cpu_no_reg)
    SWEEP/dit/multirun.yaml             the DiT sweep (experiment dit_ablate_cpu): its variant x seed grid
    SWEEP/dit/<variant>_seed<seed>/     one isa4d train-dit job each
    SWEEP/dit/<variant>_seed<seed>/eval/dit_eval.json   its isa4d evaluate mode=dit (pose following)
    SWEEP/dit_<name>/...                further DiT sweeps laid out alike (`make ablate ABLATE_LANES=n`:
                                        dit_lane0/ ... dit_lane<n-1>/, one per group of seeds)

and writes, atomically, into DIR (default `experiments/ablation`): `RESULTS.md` (tables), `results.json`
(every number, the curves), `val_loss.png` (val/flow_loss curves per variant, cf. ISA4D Fig. 14),
`vae_latent_hist.png` (latent histograms with / without the image-decoding regularisation, cf. Fig. 5)
and `vae_last_frame_bias.png` (error and sensitivity per position in the 4-frame latent window, cf. Fig. 2).

A DiT run is identified by its `.hydra/` files (variant: `hydra.runtime.choices.variant`; seed and
`trainer.max_steps`: the job config), read from the CSVLogger's `csv/metrics.csv`, and counts only when
its last validation falls on `trainer.max_steps`. Runs of the grid without a folder, without metrics or
stopped early are listed as failed with the reason, never dropped. A job's pose following (foreground
IoU of its generated clips and of the same sampling with the body dropped, `isa4d evaluate mode=dit` on
the `video` split) is reported where its `eval/dit_eval.json` exists.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from isa4d.errors import ISA4DError
from isa4d.metrics.stats import one_sample_p
from isa4d.utils.files import write_figure_atomic, write_json_atomic, write_text_atomic

METRIC = "val/flow_loss"
POSE_FILE = Path("eval") / "dit_eval.json"
POSE_SPLIT = "video"
NO_BODY_ROW = "body dropped (lower bound)"  # isa4d.evaluate.NO_BODY_ROW (not imported: that pulls in torch)
VAE_RUNS = {"reg": "vae_reg", "no_reg": "vae_no_reg"}
VAE_LABELS = {"reg": "with image-decoding reg.", "no_reg": "without (no aux. decoder)"}
VAE_COLORS = {"reg": "tab:blue", "no_reg": "tab:orange"}
SLOTS = ("frame 0", "pos 0", "pos 1", "pos 2", "pos 3")
SIGNIFICANCE = 0.05
DEFAULT_OUT = Path("experiments/ablation")


# ------------------------------------------------------------------------------------------ reading


def read_metric(path: Path, key: str) -> list[tuple[int, float]]:
    """`(step, value)` of `key` in a Lightning CSVLogger `metrics.csv`, in logged order.

    Lightning writes a validation that runs after training batch n with `step` n - 1 (it counts the
    batch after logging), so `step + 1` is the number of optimiser steps trained (one per batch).
    """
    with open(path, newline="") as file:
        return [(int(row["step"]) + 1, float(row[key])) for row in csv.DictReader(file) if row.get(key)]


@dataclass
class DiTRun:
    """One job of the DiT sweep; `error` says why it does not count (None: it completed)."""

    variant: str
    seed: int | None
    folder: Path | None = None
    max_steps: int | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    parameters: int | None = None
    wall_s: float | None = None
    error: str | None = None
    pose: dict[str, float] | None = None

    @property
    def final(self) -> float | None:
        return self.curve[-1][1] if self.curve and self.error is None else None

    @property
    def best(self) -> float | None:
        return min(value for _, value in self.curve) if self.curve and self.error is None else None

    def record(self) -> dict[str, Any]:
        """The run as JSON data (results.json)."""
        return {
            "variant": self.variant,
            "seed": self.seed,
            "folder": None if self.folder is None else str(self.folder),
            "status": "ok" if self.error is None else "failed",
            "error": self.error,
            "max_steps": self.max_steps,
            "final": self.final,
            "best": self.best,
            "parameters": self.parameters,
            "wall_s": self.wall_s,
            "pose": self.pose,
            "curve": [list(point) for point in self.curve],
        }


def count_dit_parameters(model_cfg: Any) -> int | None:
    """Parameters of the DiT a run's `model.dit` config builds, on the meta device (no memory, no
    initialisation); None when it cannot be built (then the run itself has failed)."""
    import torch
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from isa4d.models.dit import count_parameters

    try:
        with torch.device("meta"):
            return count_parameters(instantiate(model_cfg))
    except InstantiationException:
        return None


def read_dit_run(folder: Path) -> DiTRun:
    """Read one job folder of the DiT sweep (`.hydra/`, `csv/metrics.csv`)."""
    config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    choices = OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra.runtime.choices
    run = DiTRun(
        variant=str(choices.get("variant") or "(none)"),
        seed=config.get("seed"),
        folder=folder,
        max_steps=OmegaConf.select(config, "trainer.max_steps"),
        parameters=count_dit_parameters(config.model.dit),
    )
    run.pose = read_pose(folder / POSE_FILE)
    metrics = folder / "csv" / "metrics.csv"
    if not metrics.is_file():
        run.error = f"no csv/metrics.csv: failed before logging (see {folder.name}/train_dit.log)"
        return run
    run.wall_s = metrics.stat().st_mtime - (folder / ".hydra" / "config.yaml").stat().st_mtime
    run.curve = read_metric(metrics, METRIC)
    if not run.curve:
        run.error = f"no {METRIC} logged (no validation ran)"
    elif run.curve[-1][0] != run.max_steps:
        run.error = (
            f"last validation after step {run.curve[-1][0]} of {run.max_steps} (stopped early, or "
            "trainer.max_steps is not a multiple of data.epoch_size)"
        )
    return run


def read_pose(path: Path) -> dict[str, Any] | None:
    """Pose following of one job from its `dit_eval.json` on `POSE_SPLIT`: `fg_iou`, `psnr_fg` of the
    model, `fg_iou_no_body` of the same sampling with the body dropped, `body_gain` (their difference:
    what the body condition adds) and, where the report has them, the per-clip IoUs of the model
    (`fg_iou_clips`) and gains (`body_gain_clips`); None when the job was not evaluated."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    model = report["results"].get(POSE_SPLIT, {})
    no_body = {ref["model"]: ref["results"] for ref in report["references"]}.get(NO_BODY_ROW, {})
    no_body = no_body.get(POSE_SPLIT, {})
    if "fg_iou" not in model or "fg_iou" not in no_body:
        return None
    clips, clips_no_body = model.get("fg_iou_clips", []), no_body.get("fg_iou_clips", [])
    return {
        "fg_iou": model["fg_iou"],
        "psnr_fg": model["psnr_fg"],
        "fg_iou_no_body": no_body["fg_iou"],
        "body_gain": model["fg_iou"] - no_body["fg_iou"],
        "fg_iou_clips": clips,
        "body_gain_clips": list(np.subtract(clips, clips_no_body))
        if len(clips) == len(clips_no_body)
        else [],
    }


def sweep_grid(dit_dir: Path) -> list[tuple[str, int]]:
    """The (variant, seed) jobs a sweep was asked for: `hydra.sweeper.params` of its `multirun.yaml`
    with the command line's overrides on top (empty when the file or either axis is missing)."""
    path = dit_dir / "multirun.yaml"
    if not path.is_file():
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweep = OmegaConf.to_container(OmegaConf.load(path).hydra)  # unresolved: overrides as typed
    arguments = [f"{key}={value}" for key, value in (sweep["sweeper"]["params"] or {}).items()]
    axes = [text for text in [*arguments, *sweep["overrides"]["task"]] if _axis(text) in ("variant", "seed")]
    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(axes):
        swept = override.is_sweep_override()
        values[_axis(override.input_line)] = (
            list(override.sweep_string_iterator()) if swept else [override.get_value_element_as_str()]
        )
    return [(variant, int(seed)) for seed in values.get("seed", []) for variant in values.get("variant", [])]


def _axis(override: str) -> str:
    """The key an override string sets, without its `+`/`++`/`~` prefix."""
    return override.split("=", 1)[0].lstrip("+~")


def read_dit_sweeps(sweep: Path) -> list[DiTRun]:
    """Every job folder of the DiT sweep folders of `sweep` (`dit/`, `dit_*/`), plus a failed entry for
    each job of their grids found in none; by variant and seed. A (variant, seed) job in two folders is
    an error (its seed would count twice)."""
    folders = sorted(sweep.glob("dit*/"))
    runs = [
        read_dit_run(path.parent.parent)
        for dit in folders
        for path in sorted(dit.glob("*/.hydra/config.yaml"))
    ]
    found: dict[tuple[str, int | None], Path | None] = {}
    for run in runs:
        if (run.variant, run.seed) in found:
            raise ISA4DError(
                f"{sweep}: {run.variant} seed {run.seed} is in two DiT sweep folders "
                f"({found[run.variant, run.seed]} and {run.folder}); remove one and report again"
            )
        found[run.variant, run.seed] = run.folder
    missing = dict.fromkeys(job for dit in folders for job in sweep_grid(dit) if job not in found)
    runs += [
        DiTRun(variant, seed, error="missing: no run folder (the sweep stopped before this job)")
        for variant, seed in missing
    ]
    return sorted(runs, key=lambda run: (run.variant, -1 if run.seed is None else run.seed))


def read_vae_run(folder: Path) -> dict[str, Any]:
    """The stage-1 diagnostics of one VAE run: `latent_stats.json`, `last_frame_bias.json`, final val PSNR."""
    result: dict[str, Any] = {"folder": str(folder), "missing": []}
    for key, name in (("latent_stats", "latent_stats.json"), ("last_frame_bias", "last_frame_bias.json")):
        path = folder / name
        if path.is_file():
            result[key] = json.loads(path.read_text())
        else:
            result["missing"].append(name)
    metrics = folder / "csv" / "metrics.csv"
    psnr = read_metric(metrics, "val/psnr") if metrics.is_file() else []
    result["val_psnr"] = psnr[-1][1] if psnr else None
    return result


# ------------------------------------------------------------------------------------------ statistics


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test of two samples (None: under 2 values in one, or no spread)."""
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return None
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def paired_p(a: dict[int, float], b: dict[int, float]) -> float | None:
    """Two-sided p-value of a paired t-test of two variants' values over the seeds both have (a seed fixes
    the training noise of every variant alike): the one-sample test of the per-seed differences."""
    return one_sample_p([a[seed] - b[seed] for seed in sorted(a.keys() & b.keys())])


def summarize(runs: list[DiTRun]) -> list[dict[str, Any]]:
    """One row per variant: final val/flow_loss mean and sample std (ddof 1) over its completed seeds,
    the lowest value any of its runs reached, parameters, wall time, and the pose following of its
    evaluated seeds (foreground IoU; body gain with the p-values of a one-sample t-test against 0 of
    the per-seed gains and of the per-clip gains of every seed), and the p-value of its fg IoU against
    the variant with the highest one, paired over the (seed, clip) pairs both have; ranked by the mean
    flow loss, failed last."""
    rows: list[dict[str, Any]] = []
    by_clip: dict[str, dict[tuple[int | None, int], float]] = {}  # the fg IoU of each (seed, clip)
    for variant in dict.fromkeys(run.variant for run in runs):
        mine = [run for run in runs if run.variant == variant]
        done = [run for run in mine if run.error is None]
        finals = [run.final for run in done]
        walls = [run.wall_s for run in done if run.wall_s is not None]
        poses = [run.pose for run in done if run.pose is not None]
        ious, gains = [p["fg_iou"] for p in poses], [p["body_gain"] for p in poses]
        rows.append(
            {
                "variant": variant,
                "seeds": [run.seed for run in done],
                "failed_seeds": [run.seed for run in mine if run.error is not None],
                "steps": sorted({run.max_steps for run in done}),
                "finals": finals,
                "final_mean": float(np.mean(finals)) if finals else None,
                "final_std": float(np.std(finals, ddof=1)) if len(finals) > 1 else None,
                "best": min(run.best for run in done) if done else None,
                "parameters": next((run.parameters for run in mine if run.parameters is not None), None),
                "wall_s_mean": float(np.mean(walls)) if walls else None,
                "fg_iou": ious,
                "fg_iou_mean": float(np.mean(ious)) if ious else None,
                "fg_iou_std": float(np.std(ious, ddof=1)) if len(ious) > 1 else None,
                "body_gain": gains,
                "body_gain_mean": float(np.mean(gains)) if gains else None,
                "body_gain_std": float(np.std(gains, ddof=1)) if len(gains) > 1 else None,
                "body_gain_p": one_sample_p(gains),
                "body_gain_p_clips": one_sample_p([g for p in poses for g in p["body_gain_clips"]]),
            }
        )
        by_clip[variant] = {
            (run.seed, clip): iou
            for run in done
            if run.pose is not None
            for clip, iou in enumerate(run.pose["fg_iou_clips"])
        }
    evaluated = [row for row in rows if row["fg_iou_mean"] is not None]
    top = max(evaluated, key=lambda row: row["fg_iou_mean"], default=None)
    for row in rows:
        mine, best_clips = by_clip[row["variant"]], by_clip[top["variant"]] if top else {}
        pairs = sorted(mine.keys() & best_clips.keys()) if row is not top else []
        row["fg_iou_vs_top"] = top["variant"] if pairs else None
        row["fg_iou_p_vs_top"] = one_sample_p([mine[key] - best_clips[key] for key in pairs])
    rows.sort(key=lambda row: (row["final_mean"] is None, row["final_mean"] or 0.0))
    if rows and rows[0]["final_mean"] is not None:
        best = rows[0]
        for row in rows:
            done = row["final_mean"] is not None
            row["delta_vs_best"] = row["final_mean"] - best["final_mean"] if done else None
            row["p_vs_best"] = welch_p(row["finals"], best["finals"]) if done and row is not best else None
            row["p_paired_vs_best"] = (
                paired_p(_by_seed(row), _by_seed(best)) if done and row is not best else None
            )
    return rows


def _by_seed(row: dict[str, Any]) -> dict[int, float]:
    return dict(zip(row["seeds"], row["finals"], strict=True))


def noise_sentence(rows: list[dict[str, Any]]) -> str:
    """Which differences from the best variant exceed the seed-to-seed noise (Welch's and the paired
    t-test)."""
    done = [row for row in rows if row["final_mean"] is not None]
    if len(done) < 2:
        return "Fewer than two variants completed: nothing to compare."
    best, others = done[0], done[1:]
    if len(best["finals"]) < 2:
        return (
            f"The best variant (`{best['variant']}`) has a single completed seed: the seed noise is unknown, "
            "so no difference can be called larger than it (add seeds, docs/ablation.md)."
        )
    groups: dict[str, list[str]] = {"above": [], "within": [], "unknown": []}
    for row in others:
        p_value = row["p_vs_best"]
        group = (
            "unknown" if len(row["finals"]) < 2 else "above" if (p_value or 1.0) < SIGNIFICANCE else "within"
        )
        groups[group].append(row["variant"])
    paired = [row["variant"] for row in others if (row["p_paired_vs_best"] or 1.0) < SIGNIFICANCE]
    parts = [f"larger than the seed noise for {_names(groups['above']) or 'no variant'}"]
    if groups["within"]:
        parts.append(f"within it for {_names(groups['within'])}")
    if groups["unknown"]:
        parts.append(f"not testable for {_names(groups['unknown'])} (a single completed seed)")
    return (
        f"Against the best variant (`{best['variant']}`), Welch's t-test over seeds (p < {SIGNIFICANCE}, "
        f"uncorrected) finds the difference {'; '.join(parts)}. With this few seeds the test has little "
        "power: treat close rankings as ties. Paired by seed (a seed fixes the training noise of every "
        "variant alike; p paired) the difference exceeds the seed noise for "
        f"{_names(paired) or 'no variant'}."
    )


def _names(variants: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in variants)


# ------------------------------------------------------------------------------------------ writing


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def dit_table(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table of the DiT variants."""
    lines = [
        f"| rank | variant | seeds | steps | final {METRIC} (mean ± std) | Δ vs best | p vs best | p paired "
        "| best | fg IoU (p vs top) | body gain (p seeds; p clips) | parameters | wall time / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rank, row in enumerate(rows, 1):
        seeds = ", ".join(str(seed) for seed in row["seeds"]) or "–"
        if row["failed_seeds"]:
            seeds += f" (failed: {', '.join(str(seed) for seed in row['failed_seeds'])})"
        if row["final_mean"] is None:
            final, delta, p_value, p_paired = "**failed**", "–", "–", "–"
        else:
            final = _number(row["final_mean"])
            final += "" if row["final_std"] is None else f" ± {_number(row['final_std'])}"
            delta = "–" if rank == 1 else f"{row['delta_vs_best']:+.4f}"
            p_value = "–" if row["p_vs_best"] is None else _number(row["p_vs_best"], 3)
            p_paired = "–" if row["p_paired_vs_best"] is None else _number(row["p_paired_vs_best"], 3)
        steps = "/".join(str(step) for step in row["steps"]) or "–"
        wall = row["wall_s_mean"]
        wall_text = "–" if wall is None else f"{wall / 60:.1f} min ({wall / max(row['steps']):.2f} s/step)"
        parameters = "n/a" if row["parameters"] is None else f"{row['parameters']:,}"
        iou = _mean_std(row.get("fg_iou_mean"), row.get("fg_iou_std"), 3)
        if row.get("fg_iou_p_vs_top") is not None:
            iou += f" ({_p(row['fg_iou_p_vs_top'])})"
        gain = _mean_std(row.get("body_gain_mean"), row.get("body_gain_std"), 3, signed=True)
        tests = [_p(row.get(key)) for key in ("body_gain_p", "body_gain_p_clips")]
        if any(text != "–" for text in tests):
            gain += f" ({'; '.join(tests)})"
        lines.append(
            f"| {rank if row['final_mean'] is not None else '–'} | `{row['variant']}` | {seeds} | {steps} "
            f"| {final} | {delta} | {p_value} | {p_paired} | {_number(row['best'])} | {iou} | {gain} "
            f"| {parameters} | {wall_text} |"
        )
    return lines


def _p(value: float | None) -> str:
    """A p-value in 3 significant digits (`–`: not testable)."""
    return "–" if value is None else f"{value:.3g}"


def _mean_std(mean: float | None, std: float | None, digits: int, signed: bool = False) -> str:
    """`mean ± std` (`–` without a mean; the mean alone without a std)."""
    if mean is None:
        return "–"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def pose_sentence(rows: list[dict[str, Any]]) -> str:
    """Which variants' body condition raises the foreground IoU beyond the seed noise."""
    evaluated = [row for row in rows if row.get("fg_iou")]
    if not evaluated:
        return "No job was evaluated for pose following (no `eval/dit_eval.json`)."

    def significant(row: dict[str, Any], key: str) -> bool:
        return (row[key] or 1.0) < SIGNIFICANCE and row["body_gain_mean"] > 0

    above = [row["variant"] for row in evaluated if significant(row, "body_gain_p")]
    above_clips = [row["variant"] for row in evaluated if significant(row, "body_gain_p_clips")]
    top = next((row["fg_iou_vs_top"] for row in evaluated if row["fg_iou_vs_top"]), None)
    below = [row["variant"] for row in evaluated if (row["fg_iou_p_vs_top"] or 1.0) < SIGNIFICANCE]
    tied = [row["variant"] for row in evaluated if row["fg_iou_vs_top"] and row["variant"] not in below]
    text = (
        f"Pose following (`isa4d evaluate mode=dit` on the `{POSE_SPLIT}` split): fg IoU of the generated "
        "person mask against the ground truth; body gain: that IoU minus the IoU of the same sampling with "
        "the body dropped (same clips and noise). p seeds: one-sample t-test of the per-seed gains against "
        "0 — the body raises the IoU beyond the seed noise (p < "
        f"{SIGNIFICANCE}) for {_names(above) or 'no variant'}; p clips: the same test of the per-clip gains "
        f"of every seed (sampling and clip noise; the seeds pooled) — beyond it for "
        f"{_names(above_clips) or 'no variant'}."
    )
    if top:
        text += (
            f" fg IoU against the highest (`{top}`), paired over the (seed, clip) pairs both have "
            "(p vs top): "
            f"lower beyond that noise for {_names(below) or 'no variant'}; not separated for "
            f"{_names(tied) or 'no variant'}."
        )
    return text


def vae_table(vae: dict[str, dict[str, Any]]) -> list[str]:
    """The Markdown table of the two VAE runs (PSNR, latent statistics, per-position bias)."""
    lines = [
        "| run | val PSNR (dB) | latent mean | latent std | recon L1: frame 0 / p0 / p1 / p2 / p3 "
        "| sensitivity: frame 0 / p0 / p1 / p2 / p3 | sensitivity p3 / p0 "
        "| minus the untrained VAE's: p0 / p1 / p2 / p3 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in vae.items():
        if "latent_stats" not in run and "last_frame_bias" not in run:
            lines.append(f"| {VAE_LABELS[name]} | **missing** ({run['folder']}) | | | | | | |")
            continue
        stats = run.get("latent_stats", {})
        bias = _bias_values(run)
        sensitivity = bias.get("sensitivity")
        ratio = sensitivity[4] / sensitivity[1] if sensitivity and sensitivity[1] else None
        excess = run.get("last_frame_bias", {}).get("sensitivity_minus_untrained") or []
        lines.append(
            f"| {VAE_LABELS[name]} | {_number(run['val_psnr'], 2)} | {_number(stats.get('mean'))} "
            f"| {_number(stats.get('std'))} | {' / '.join(_number(v) for v in bias.get('recon_l1', []))} "
            f"| {' / '.join(_number(v) for v in sensitivity or [])} | {_number(ratio, 2)} "
            f"| {' / '.join(_number(v) for v in excess[1:]) or 'n/a (older run)'} |"
        )
    return lines


def _bias_values(run: dict[str, Any]) -> dict[str, list[float | None]]:
    """`{metric: [frame 0, position 0 .. 3]}` of a run's last_frame_bias.json (empty if missing)."""
    bias = run.get("last_frame_bias")
    if bias is None:
        return {}
    return {
        name: [bias["frame_0"].get(name)] + [entry.get(name) for entry in bias["positions"]]
        for name in ("recon_l1", "sensitivity")
    }


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: list[DiTRun], path: Path) -> None:
    """val/flow_loss against steps: each seed thin, the mean over a variant's completed seeds bold."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, variant in enumerate(dict.fromkeys(run.variant for run in runs if run.curve)):
        color = f"C{index % 10}"
        mine = [run for run in runs if run.variant == variant and run.curve]
        for run in mine:
            steps, values = zip(*run.curve, strict=True)
            axis.plot(
                steps,
                values,
                color=color,
                alpha=0.3,
                linewidth=0.8,
                linestyle="-" if run.error is None else ":",
            )
        done = [dict(run.curve) for run in mine if run.error is None]
        common = sorted(set.intersection(*(set(curve) for curve in done))) if done else []
        if common:
            mean = [np.mean([curve[step] for curve in done]) for step in common]
            axis.plot(
                common,
                mean,
                color=color,
                linewidth=2,
                marker="o",
                markersize=3,
                label=f"{variant} ({len(done)})",
            )
    axis.set_xlabel("optimiser steps")
    axis.set_ylabel(f"{METRIC} (fixed t, seeded noise)")
    axis.set_title("DiT ablation: validation flow loss (mean over seeds; thin: each seed)")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    write_figure_atomic(path, figure)


def plot_latent_histograms(vae: dict[str, dict[str, Any]], path: Path) -> None:
    """Densities of the raw and of the normalised latents, with vs without the regularisation."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, run in vae.items():
        stats = run["latent_stats"]
        counts = np.asarray(stats["histogram"]["counts"], np.float64)
        edges = np.asarray(stats["histogram"]["edges"], np.float64)
        shift = np.mean(stats["shift"])
        scale = np.mean(stats["scale"])
        for axis, bins in ((axes[0], edges), (axes[1], (edges - shift) * scale)):
            density = counts / max(counts.sum(), 1) / np.diff(bins)
            label = f"{VAE_LABELS[name]} (std {stats['std']:.3g})"
            axis.stairs(density, bins, color=VAE_COLORS[name], label=label)
    axes[0].set_title("raw latents")
    axes[1].set_title("normalised latents (z - shift) * scale")
    for axis in axes:
        axis.set_yscale("log")
        axis.set_ylabel("density")
        axis.legend(fontsize=8)
    write_figure_atomic(path, figure)


def plot_last_frame_bias(vae: dict[str, dict[str, Any]], path: Path) -> None:
    """Reconstruction error and sensitivity per position of the 4-frame window, with vs without reg."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    where = np.arange(len(SLOTS))
    width = 0.8 / len(vae)
    for k, (name, run) in enumerate(vae.items()):
        bias = _bias_values(run)
        for axis, metric in zip(axes, ("recon_l1", "sensitivity"), strict=True):
            values = [np.nan if value is None else value for value in bias[metric]]
            axis.bar(where + k * width, values, width, color=VAE_COLORS[name], label=VAE_LABELS[name])
    axes[0].set_title("reconstruction error: mean |x_hat - x| on [-1, 1]")
    axes[1].set_title("sensitivity to noise on the window's latent frame")
    for axis in axes:
        axis.set_xticks(where + width * (len(vae) - 1) / 2, SLOTS)
        axis.legend(fontsize=8)
    write_figure_atomic(path, figure)


def _plot_or_remove(path: Path, make: Any, data: Any) -> bool:
    """Draw a figure with `make(data, path)`, or remove a stale one when `data` is empty."""
    if data:
        make(data, path)
        return True
    path.unlink(missing_ok=True)
    return False


def results_markdown(
    sweep: Path,
    runs: list[DiTRun],
    rows: list[dict[str, Any]],
    vae: dict[str, dict[str, Any]],
    figures: dict[str, bool],
) -> str:
    """RESULTS.md: the DiT table, the noise statement, failed runs, the VAE table; `figures` says which
    figure files exist."""

    def figure(name: str, text: str) -> list[str]:
        return ["", f"![{text}]({name})"] if figures[name] else []

    failed = [run for run in runs if run.error is not None]
    steps = sorted({run.max_steps for run in runs if run.error is None})
    lines = [
        "# Ablation results (`make ablate`)",
        "",
        f"Sweep `{sweep}`, report by `isa4d ablate-report {sweep}` (docs/ablation.md). Tiny CPU configs on "
        "the embedded synthetic data: these numbers compare the variants with each other and reproduce no "
        "number of the paper.",
        "",
        "## Stage 2: DiT variants",
        "",
        f"{len(runs) - len(failed)} of {len(runs)} runs completed. `{METRIC}`: the flow loss at fixed times "
        "with seeded noise on the `video` split (lower is better; comparable across runs). Final: at the "
        "last step; mean ± sample std (ddof 1) over the completed seeds; Δ and p (Welch's t-test) against "
        "rank 1; best: the lowest value any run of the variant reached at a validation. Wall time: job "
        "start to its last metrics write, validation included.",
        "",
        *dit_table(rows),
        "",
        noise_sentence(rows),
        "",
        pose_sentence(rows),
    ]
    if len(steps) > 1:
        lines += [
            "",
            f"**Warning**: completed runs trained different step counts ({steps}): not equal steps.",
        ]
    lines += figure("val_loss.png", "val/flow_loss curves")
    if failed:
        lines += ["", "Failed or missing runs:", ""]
        lines += [
            f"- `{run.variant}` seed {run.seed}: {run.error}" + (f" — `{run.folder}`" if run.folder else "")
            for run in failed
        ]
    lines += [
        "",
        "## Stage 1: VAE with and without the image-decoding regularisation",
        "",
        "Paper Tab. 1: 36.59 dB with the regularisation vs 36.71 dB without, and a stronger last-frame bias "
        "without it. Recon L1 per frame of the 4-frame window of each latent frame (positions p0..p3, "
        "frame 0 alone); sensitivity: mean |change| of the decoded frame when that latent frame is perturbed "
        "(a latent that mostly encodes its window's last frame has a sensitivity rising towards p3).",
        "",
        *vae_table(vae),
        *figure("vae_latent_hist.png", "latent histograms"),
        *figure("vae_last_frame_bias.png", "last-frame bias"),
    ]
    missing = [f"{VAE_RUNS[name]}/{file}" for name, run in vae.items() for file in run["missing"]]
    if missing:
        lines += ["", f"Missing VAE outputs: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def build_report(sweep: Path, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Read the sweep folder and write RESULTS.md, results.json and the three figures into `out`."""
    runs = read_dit_sweeps(sweep)
    rows = summarize(runs)
    vae = {name: read_vae_run(sweep / folder) for name, folder in VAE_RUNS.items()}
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "val_loss.png": _plot_or_remove(
            out / "val_loss.png", plot_curves, [run for run in runs if run.curve]
        ),
        "vae_latent_hist.png": _plot_or_remove(
            out / "vae_latent_hist.png",
            plot_latent_histograms,
            {name: run for name, run in vae.items() if "latent_stats" in run},
        ),
        "vae_last_frame_bias.png": _plot_or_remove(
            out / "vae_last_frame_bias.png",
            plot_last_frame_bias,
            {name: run for name, run in vae.items() if "last_frame_bias" in run},
        ),
    }
    write_text_atomic(out / "RESULTS.md", results_markdown(sweep, runs, rows, vae, figures))
    report = {
        "sweep": str(sweep),
        "metric": METRIC,
        "dit": {"variants": rows, "runs": [run.record() for run in runs]},
        "vae": vae,
    }
    write_json_atomic(out / "results.json", report)
    return report


# ------------------------------------------------------------------------------------------ command


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `ablate-report SWEEP [--out DIR]` on `subparsers` (sets `func`)."""
    parser = subparsers.add_parser("ablate-report", help="tables and figures of a `make ablate` sweep folder")
    parser.add_argument("sweep", type=Path, help="the sweep folder, e.g. logs/ablate/<time>")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> None:
    if not args.sweep.is_dir():
        raise SystemExit(f"isa4d ablate-report: {args.sweep} is not a folder")
    build_report(args.sweep, args.out)
    print((args.out / "RESULTS.md").read_text())


if __name__ == "__main__":
    from isa4d.cli import main

    main(["ablate-report", *sys.argv[1:]])
