"""Streaming DataModules: rank/worker splitting, skipped bad data, batch contents and geometry, configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import webdataset as wds

from isa4d.config import compose
from isa4d.data import Cameras, Clip, Reference, SMPLParams, encode_sample, shard_paths, write_shards
from isa4d.data.augment import CropJitter, SpeedAdjustment, StructuredMotion
from isa4d.data.datamodules import HumanVideoDataModule, SkippedSamplesLogger, VideoDataModule
from isa4d.data.format import SMPL, npz_bytes
from isa4d.data.pipeline import SkipCounter, make_webdataset
from isa4d.errors import ConfigError, MissingFileError
from isa4d.geometry import intrinsics_from_fov, look_at, project_points

FRAMES, SIZE, REF_SIZE, FOV, GREY = 17, (64, 64), (48, 80), 50.0, 40
EYE, TARGET = (0.0, 1.0, 3.0), (0.0, 1.0, 0.0)


def moving_video(frames: int = FRAMES, seed: int = 0) -> np.ndarray:
    """`(T, 64, 64, 3)` uint8 smooth moving sinusoids (codec-friendly)."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(SIZE[0]), np.arange(SIZE[1]), indexing="ij")
    channels = [
        128 + 100 * np.sin(0.2 * x + 0.3 * t + seed),
        128 + 100 * np.cos(0.15 * y - 0.2 * t),
        128 + 0 * x,
    ]
    return np.stack(channels, axis=-1).astype(np.uint8)


def video_clip(key: str, split: str, frames: int = FRAMES) -> Clip:
    return Clip.create(key, moving_video(frames, seed=len(key)), 25.0, split=split)


def camera(frames: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    K = intrinsics_from_fov(FOV, size, torch.float64)
    R, t = look_at(torch.tensor(EYE, dtype=torch.float64), torch.tensor(TARGET, dtype=torch.float64))
    return K.expand(frames, 3, 3), R.expand(frames, 3, 3), t.expand(frames, 3)


def dots(transl: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frames `(T, H, W, 3)` with a white disc at each person's projected `transl (P, T, 3)`, and labels."""
    frames = transl.shape[1]
    K, R, t = camera(frames, size)
    v, u = np.mgrid[: size[0], : size[1]]
    video = np.full((frames, *size, 3), GREY, np.uint8)
    labels = np.zeros((frames, *size), np.uint8)
    for p, path in enumerate(transl):
        uv = project_points(torch.from_numpy(path)[:, None], K, R, t)[0][:, 0].numpy()
        for i, (cu, cv) in enumerate(uv):
            disc = (u - cu) ** 2 + (v - cv) ** 2 <= 5.5**2
            video[i][disc], labels[i][disc] = 255, p + 1
    return video, labels


def smpl_params(transl: np.ndarray) -> SMPLParams:
    persons, frames = transl.shape[:2]
    zeros = np.zeros((persons, frames, 3))
    return SMPLParams(zeros, np.zeros((persons, frames, 69)), np.zeros((persons, 10)), transl)


def human_clip(key: str, split: str, persons: int, background: bool, reference: bool) -> Clip:
    """Persons 1.2 m apart walking right, seen from 3 m: discs at the projected `transl`."""
    steps = np.arange(FRAMES)[:, None]
    transl = np.stack(
        [np.hstack([-0.6 + 1.2 * p + 0.02 * steps, 1.0 + 0.01 * steps, 0 * steps]) for p in range(persons)]
    )
    video, labels = dots(transl, SIZE)
    K, R, t = camera(FRAMES, SIZE)
    ref = None
    if reference:
        image = dots(transl[:, :1], REF_SIZE)[0][0]
        K1, R1, t1 = camera(1, REF_SIZE)
        ref = Reference(
            image, smpl_params(transl[:, :1]), Cameras(K1.numpy(), R1.numpy(), t1.numpy(), REF_SIZE)
        )
    return Clip.create(
        key,
        video,
        25.0,
        smpl=smpl_params(transl),
        camera=Cameras(K.numpy(), R.numpy(), t.numpy(), SIZE),
        background=np.full_like(video, GREY) if background else None,
        mask=labels,
        reference=ref,
        split=split,
    )


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("video")
    write_shards([video_clip(f"v{i}", "train") for i in range(8)], folder, "train", 2, 1e9, progress=False)
    write_shards([video_clip(f"w{i}", "val") for i in range(5)], folder, "val", 2, 1e9, progress=False)
    return folder


@pytest.fixture(scope="module")
def human_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("human")
    train = [human_clip(f"h{i}", "train", 1 + i % 2, i % 3 == 0, i % 2 == 0) for i in range(6)]
    write_shards(train, folder, "train", 2, 1e9, progress=False)
    val = [human_clip(f"g{i}", "video", 2 - i % 2, i == 0, i == 1) for i in range(3)]
    write_shards(val, folder, "video", 2, 1e9, progress=False)
    return folder


def bad_samples() -> list[dict]:
    """A garbage mp4, NaN in SMPL and a clip too short for 9 frames, among good samples."""
    garbage = encode_sample(video_clip("bad-mp4", "train"))
    garbage["video.mp4"] = b"\x00\x00\x01 not an mp4" * 50
    nan = encode_sample(human_clip("bad-nan", "train", 1, False, False))
    transl = np.full((1, FRAMES, 3), np.nan, np.float32)
    nan[SMPL] = npz_bytes({**np.load(__import__("io").BytesIO(nan[SMPL])), "transl": transl})
    short = encode_sample(video_clip("short", "train", frames=5))
    good = [encode_sample(video_clip(f"ok{i}", "train")) for i in range(2)]
    return [garbage, good[0], nan, short, good[1]]


def add_shards(folder: Path, split: str, shards: dict[str, list[dict] | bytes]) -> None:
    """Write tars (samples, or raw bytes for broken files) and list them in the manifest's `split`."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, content in shards.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            with wds.TarWriter(str(folder / name)) as writer:
                for sample in content:
                    writer.write(sample)
        manifest["splits"][split]["shards"].append({"name": name, "num_samples": 0, "num_bytes": 0})
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def bad_dir(tmp_path) -> Path:
    """Split `train`: two good shards, a shard of bad samples, a truncated shard, one more good shard."""
    write_shards(
        [video_clip(f"good{i}", "train") for i in range(4)], tmp_path, "train", 2, 1e9, progress=False
    )
    write_shards(
        [video_clip(f"trunc{i}", "cut") for i in range(3)], tmp_path / "cut", "cut", 8, 1e9, progress=False
    )
    whole = (tmp_path / "cut" / "cut-000000.tar").read_bytes()
    add_shards(
        tmp_path,
        "train",
        {"train-000002.tar": bad_samples(), "train-000003.tar": whole[: len(whole) * 3 // 5 + 123]},
    )
    add_shards(tmp_path, "train", {"train-000004.tar": [encode_sample(video_clip("last", "train"))]})
    return tmp_path


def video_module(folder: Path, **overrides) -> VideoDataModule:
    kwargs = {
        "train_dirs": [folder],
        "val_dirs": [folder],
        "num_frames": 9,
        "resolution": 32,
        "batch_size": 2,
        "num_workers": 0,
        "epoch_size": 10,
        "shuffle_buffer": 4,
        "motion": StructuredMotion(max_speed=1.5, max_acceleration=0.1),
        "speed": SpeedAdjustment(rates=[1, 2]),
        "crop": CropJitter(scale=(0.8, 1.0)),
        **overrides,
    }
    module = VideoDataModule(**kwargs)
    module.setup("fit")
    return module


# ---------------------------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("shuffle_buffer", [0, 3])
def test_two_ranks_read_disjoint_shards_covering_everything_once(video_dir, monkeypatch, shuffle_buffer):
    urls = [str(path) for path in shard_paths(video_dir, "train")]
    keys = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dataset = make_webdataset(
            [urls],
            decode_fn=lambda sample: {"video": torch.zeros(1), "key": sample["__key__"]},
            batch_size=1,
            resampled=False,
            shuffle_buffer=shuffle_buffer,
            seed=0,
            epoch_size=None,
            skips=SkipCounter(),
        )
        keys.append([key for batch in dataset for key in batch["key"]])
    assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == [f"v{i}" for i in range(8)]


def test_bad_samples_and_broken_shards_are_skipped_and_counted(bad_dir, caplog):
    # 1.0: never stop (a third of these samples are bad; tests/test_bad_data.py stops above the fraction)
    module = video_module(bad_dir, val_splits=["train"], val_batch_size=1, max_skip_fraction=1.0)
    keys = [key for batch in module.val_dataloader() for key in batch["key"]]
    good = {f"good{i}" for i in range(4)} | {"ok0", "ok1", "last"}
    assert good <= set(keys) and set(keys) - good <= {f"trunc{i}" for i in range(3)}
    counts = module.skips["val"].counts
    assert counts["invalid"] >= 2 and counts["unusable"] == 1 and counts["read"] >= 1
    skipped = " ".join(record.getMessage() for record in caplog.records)
    assert "bad-mp4" in skipped and "bad-nan" in skipped and "transl: contains NaN" in skipped
    assert "short" in skipped and "fewer than the 9" in skipped


def test_consecutive_skips_abort_instead_of_looping_forever(tmp_path):
    write_shards([video_clip("x", "train")], tmp_path, "train", 1, 1e9, progress=False)  # 17 frames < 33
    module = video_module(tmp_path, val_dirs=[], num_frames=33, image_prob=0.0, max_consecutive_skips=5)
    with pytest.raises(RuntimeError, match="5 consecutive samples skipped"):
        next(iter(module.train_dataloader()))


# ---------------------------------------------------------------------------------------------- batches


def test_video_batches_mix_clips_and_images(video_dir):
    torch.manual_seed(0)
    module = video_module(video_dir, image_prob=0.5, epoch_size=24)
    loader = module.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == module.batches_per_stream() == 12  # len: the progress bar's total
    two_workers = video_module(video_dir, image_prob=0.5, epoch_size=24, num_workers=2)
    loader = two_workers.train_dataloader()
    assert len(list(loader)) == len(loader) == 2 * two_workers.batches_per_stream() == 12
    shapes = {tuple(batch["video"].shape) for batch in batches}
    assert shapes == {(2, 3, 9, 32, 32), (2, 3, 1, 32, 32)}
    for batch in batches:
        video = batch["video"]
        assert video.dtype == torch.float32 and -1 <= video.min() and video.max() <= 1 and video.std() > 0.1
        stride = batch["aug"]["stride"]
        assert set(stride.tolist()) <= ({0.0} if video.shape[2] == 1 else {1.0, 2.0})
        assert batch["aug"]["velocity"].shape == (2, 2)
    val = list(module.val_dataloader())
    assert [batch["video"].shape[0] for batch in val] == [2, 2, 1]
    assert all(batch["video"].shape[1:] == (3, 9, 32, 32) for batch in val)
    assert all(not batch["aug"]["velocity"].any() and (batch["aug"]["stride"] == 1).all() for batch in val)


def test_source_weights_pick_the_training_folders(video_dir, human_dir):
    module = video_module(
        video_dir, train_dirs=[video_dir, human_dir], train_weights=[1.0, 0.0], image_prob=0.0
    )
    assert all(key.startswith("v") for batch in module.train_dataloader() for key in batch["key"])


def assert_on_person(image: torch.Tensor, labels: torch.Tensor | None, uv: torch.Tensor, label: int) -> bool:
    """True if the pixel at `uv` is white (and labelled `label`); False if `uv` is outside the image."""
    u, v = (int(round(float(c))) for c in uv)
    if not (0 <= u < image.shape[-1] and 0 <= v < image.shape[-2]):
        return False
    assert image[:, v, u].min() > 0.5, (uv, image[:, v, u])
    assert labels is None or labels[v, u] == label
    return True


def test_human_batches_are_padded_and_smpl_projects_onto_the_person(human_dir):
    torch.manual_seed(0)
    module = HumanVideoDataModule(
        train_dirs=[human_dir],
        val_dirs=[human_dir],
        val_splits=["video"],
        num_frames=9,
        resolution=(32, 48),
        max_persons=3,
        batch_size=3,
        num_workers=0,
        epoch_size=6,
        motion=StructuredMotion(max_speed=1.5),
        speed=SpeedAdjustment(rates=[1, 2]),
        crop=CropJitter(scale=(0.7, 1.0)),
    )
    module.setup("fit")
    val = list(module.val_dataloader())
    batches = [*module.train_dataloader(), *val]
    P, T, H, W = 3, 9, 32, 48
    checked = 0
    for batch in batches:
        n = len(batch["key"])
        assert batch["video"].shape == batch["background"].shape == (n, 3, T, H, W)
        assert batch["mask"].shape == (n, T, H, W) and batch["mask"].dtype == torch.uint8
        assert batch["smpl"]["body_pose"].shape == (n, P, T, 69) and batch["smpl"]["betas"].shape == (
            n,
            P,
            10,
        )
        assert batch["K"].shape == batch["R"].shape == (n, T, 3, 3) and batch["t"].shape == (n, T, 3)
        assert batch["ref_image"].shape == (n, 3, H, W) and batch["ref_K"].shape == (n, 1, 3, 3)
        assert batch["ref_smpl"]["transl"].shape == (n, P, 1, 3) and batch["ref_t"].shape == (n, 1, 3)
        persons = batch["person_mask"].sum(1)
        assert set(persons.tolist()) <= {1, 2} and not batch["person_mask"][:, 2].any()
        assert batch["mask"].max() <= 2 and (batch["smpl"]["transl"][~batch["person_mask"]] == 0).all()
        for b in range(n):
            background = batch["background"][b]
            if batch["has_background"][b]:
                torch.testing.assert_close(
                    background, torch.full_like(background, GREY / 127.5 - 1), atol=0.03, rtol=0
                )
            else:
                assert not background.any()
            if not batch["has_reference"][b]:
                torch.testing.assert_close(batch["ref_image"][b], batch["video"][b, :, 0])
            for p in range(int(persons[b])):
                for i in range(T):
                    point = batch["smpl"]["transl"][b, p, i][None].double()
                    uv = project_points(
                        point, batch["K"][b, i].double(), batch["R"][b, i].double(), batch["t"][b, i].double()
                    )[0][0]
                    checked += assert_on_person(batch["video"][b, :, i], batch["mask"][b, i], uv, p + 1)
                point = batch["ref_smpl"]["transl"][b, p, 0][None].double()
                ref_uv = project_points(
                    point,
                    batch["ref_K"][b, 0].double(),
                    batch["ref_R"][b, 0].double(),
                    batch["ref_t"][b, 0].double(),
                )
                checked += assert_on_person(batch["ref_image"][b], None, ref_uv[0][0], p + 1)
    assert checked > 80  # validation alone checks 50 (every person in frame); training adds ~100
    # validation is deterministic: g0 has a background, g1 a reference, g2 neither
    assert [key for batch in val for key in batch["key"]] == ["g0", "g1", "g2"]
    assert [flag for batch in val for flag in batch["has_background"].tolist()] == [True, False, False]
    assert [flag for batch in val for flag in batch["has_reference"].tolist()] == [False, True, False]


def test_human_module_skips_unannotated_and_crowded_clips(human_dir, video_dir):
    module = HumanVideoDataModule(
        train_dirs=[human_dir],
        val_dirs=[human_dir, video_dir],
        val_splits=["video", "val"],
        num_frames=9,
        resolution=32,
        max_persons=1,
        batch_size=4,
        num_workers=0,
    )
    module.setup("validate")
    keys = [key for batch in module.val_dataloader() for key in batch["key"]]
    assert keys == ["g1"]  # g0, g2 have 2 persons; w0..w4 are not annotated
    assert module.skips["val"].counts == {"read": 0, "invalid": 0, "unusable": 7}


# ---------------------------------------------------------------------------------------------- loaders


def batches_by_key(loader) -> dict[str, torch.Tensor]:
    return {key: batch["video"][i] for batch in loader for i, key in enumerate(batch["key"])}


class _Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.weight - batch["video"].mean()) ** 2

    def validation_step(self, batch, batch_idx):
        self.log("val/mean", batch["video"].mean(), batch_size=len(batch["key"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_val_is_deterministic_and_two_workers_count_skips_together(video_dir, bad_dir):
    one = video_module(video_dir)
    first, second = batches_by_key(one.val_dataloader()), batches_by_key(one.val_dataloader())
    assert list(first) == list(second) and all(torch.equal(first[key], second[key]) for key in first)
    two = video_module(video_dir, num_workers=2)
    parallel = batches_by_key(two.val_dataloader())
    assert sorted(parallel) == sorted(first) and all(torch.equal(parallel[key], first[key]) for key in first)

    # training with 2 workers on shards that each start with a bad sample; the callback logs the sum
    folder = bad_dir / "each"
    write_shards([video_clip("a", "train")], folder, "train", 1, 1e9, progress=False)
    samples = bad_samples()
    add_shards(folder, "train", {"train-000001.tar": samples[:2], "train-000002.tar": samples[2:]})
    module = video_module(folder, num_workers=2, epoch_size=8, image_prob=0.0, val_dirs=[video_dir])
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SkippedSamplesLogger()],
        log_every_n_steps=1,
    )
    trainer.fit(_Probe(), datamodule=module)
    assert 1 <= trainer.callback_metrics["data/skipped"] <= module.skips["train"].total
    assert trainer.callback_metrics["data/val_skipped"] == 0
    assert trainer.fit_loop.total_batch_idx + 1 == module.batches_per_stream() * 2


# ---------------------------------------------------------------------------------------------- setup


def test_setup_names_the_command_that_builds_missing_data(tmp_path, video_dir):
    with pytest.raises(MissingFileError, match="make data"):  # user errors: one line from the CLI
        video_module(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"has none of the splits \['mask'\] \(it has \['train', 'val'\]\)"):
        video_module(video_dir, val_splits=["mask"])
    missing = tmp_path / "copy"
    shutil.copytree(video_dir, missing)
    (missing / "train-000001.tar").unlink()
    with pytest.raises(MissingFileError, match="missing"):
        video_module(missing)
    with pytest.raises(RuntimeError, match="setup"):
        VideoDataModule(train_dirs=[video_dir]).train_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_frames": 8}, "1 \\+ 4k"),
        ({"resolution": 30}, "multiple of 8"),
        ({"train_weights": [1, 2]}, "weights"),
    ],
)
def test_bad_arguments_are_refused(video_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        VideoDataModule(train_dirs=[video_dir], **kwargs)


@pytest.mark.parametrize(
    ("root", "name", "cls"),
    [("train_vae", "video", VideoDataModule), ("train_dit", "human", HumanVideoDataModule)],
)
def test_configs_instantiate_and_read_shards(root, name, cls, tmp_path, video_dir, human_dir):
    from hydra.utils import instantiate

    cfg = compose(root, [f"data={name}"])
    assert cfg.data.num_frames == 33 and cfg.data.resolution == 256 and cfg.data.num_workers == 2
    assert cfg.data.train_dirs[0].endswith("shards/synth")
    module = instantiate(cfg.data)
    assert isinstance(module, cls) and isinstance(module.augment.speed, SpeedAdjustment)
    folder = human_dir if name == "human" else video_dir
    split = "video" if name == "human" else "val"
    small = [
        f"data.train_dirs=[{folder}]",
        f"data.val_dirs=[{folder}]",
        f"data.val_splits=[{split}]",
        "data.train_weights=null",
        "data.num_frames=9",
        "data.resolution=32",
        "data.num_workers=0",
        "data.batch_size=1",
    ]
    module = instantiate(compose(root, [f"data={name}", *small]).data)
    module.setup("fit")
    assert next(iter(module.val_dataloader()))["video"].shape == (1, 3, 9, 32, 32)
