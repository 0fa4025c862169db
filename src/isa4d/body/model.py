"""The SMPL body model (real SMPL from a converted `.npz`, or the procedural stand-in) as a module."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import smplx
import torch
from torch import nn

from isa4d.body.procedural import procedural_body_data
from isa4d.body.skeleton import NUM_JOINTS
from isa4d.body.storage import canonical_body_arrays, load_body_npz

PROCEDURAL = "procedural"
"""Body source naming the procedural stand-in body (see :mod:`isa4d.body.procedural`)."""
SMPL_NPZ_NAME = "SMPL_NEUTRAL.npz"
SMPL_PICKLE_NAME = "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
_HOW_TO_GET_SMPL = (
    f"Expected an SMPL-format .npz such as {SMPL_NPZ_NAME}, made once from the licensed SMPL pickle "
    f"({SMPL_PICKLE_NAME}, from https://smpl.is.tue.mpg.de) with "
    f"`isa4d body convert {SMPL_PICKLE_NAME} {SMPL_NPZ_NAME}`. Without SMPL files, use the source "
    f"'{PROCEDURAL}' (config `body=procedural`): a stand-in body in SMPL format, not SMPL."
)

BodySource = str | Path | Mapping[str, np.ndarray]


class BodyOutput(NamedTuple):
    """Posed body: `vertices (..., V, 3)` and SMPL `joints (..., 24, 3)` in world coordinates (metres)."""

    vertices: torch.Tensor
    joints: torch.Tensor


class _SkeletonJointsOnly(nn.Module):
    """Stands in for smplx's `VertexJointSelector`, which appends SMPL-H landmark vertices (by SMPL
    vertex id) to the joints: keeps the 24 skeleton joints only, for any mesh."""

    def forward(self, vertices: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        return joints


def resolve_body_data(source: BodySource | None) -> dict[str, np.ndarray]:
    """SMPL arrays of a body source.

    Args:
        source: "procedural"; a path to an SMPL-format `.npz` (or a folder holding `SMPL_NEUTRAL.npz`);
            or a mapping of SMPL arrays.

    Raises:
        FileNotFoundError: if `source` is None or the file does not exist (names the expected files,
            the conversion command and the procedural alternative).
        ValueError: if `source` is an SMPL pickle, which must be converted first.
    """
    if isinstance(source, Mapping):
        return canonical_body_arrays(source)
    if source is None:
        raise FileNotFoundError(f"No body model configured. {_HOW_TO_GET_SMPL}")
    if str(source) == PROCEDURAL:
        return procedural_body_data()
    path = Path(source).expanduser()
    if path.suffix == ".pkl":
        raise ValueError(
            f"{path} is an SMPL pickle; convert it once with `isa4d body convert {path} "
            f"{path.with_name(SMPL_NPZ_NAME)}` and use the .npz (pickles are never loaded directly)."
        )
    if path.is_dir():
        path = path / SMPL_NPZ_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No SMPL body model file at {path}. {_HOW_TO_GET_SMPL}")
    return load_body_npz(path)


class BodyModel(nn.Module):
    """SMPL forward kinematics and skinning through the real `smplx.SMPL` layer.

    World frame: y up, metres; at zero pose the body stands in SMPL's T-pose facing +z, its left on +x.
    All pose inputs are axis-angle. The SMPL-H landmark joints that smplx appends are not computed.
    The module has no parameters and no persistent buffers: its state dict is empty, so checkpoints
    never contain (licensed) model data and do not depend on the body source.

    Attributes:
        faces: (F, 3) int64 buffer, counter-clockwise seen from outside.
    """

    def __init__(self, source: BodySource | None = PROCEDURAL, num_betas: int = 10) -> None:
        """
        Args:
            source: see :func:`resolve_body_data`.
            num_betas: number of shape coefficients used (at most what the file has).
        """
        super().__init__()
        arrays = resolve_body_data(source)
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning for 10-beta files
            self.smpl = smplx.SMPL(
                "",
                data_struct=SimpleNamespace(**arrays),
                num_betas=num_betas,
                create_betas=False,
                create_global_orient=False,
                create_body_pose=False,
                create_transl=False,
            )
        self.smpl.vertex_joint_selector = _SkeletonJointsOnly()
        for module in self.smpl.modules():  # model data is rebuilt from the source, never checkpointed
            for name, buffer in list(module.named_buffers(recurse=False)):
                module.register_buffer(name, buffer, persistent=False)
        self.register_buffer("faces", torch.from_numpy(arrays["f"].copy()), persistent=False)

    @property
    def num_betas(self) -> int:
        return self.smpl.num_betas

    @property
    def num_vertices(self) -> int:
        return self.smpl.v_template.shape[0]

    @property
    def v_template(self) -> torch.Tensor:
        """Rest-pose (T-pose, zero betas) vertices (V, 3)."""
        return self.smpl.v_template

    @property
    def parents(self) -> torch.Tensor:
        """Parent joint index of each of the 24 joints (24,), -1 for the pelvis."""
        return self.smpl.parents

    @property
    def lbs_weights(self) -> torch.Tensor:
        """Skinning weights (V, 24)."""
        return self.smpl.lbs_weights

    def forward(
        self,
        global_orient: torch.Tensor,
        body_pose: torch.Tensor,
        betas: torch.Tensor | None = None,
        transl: torch.Tensor | None = None,
    ) -> BodyOutput:
        """Pose and shape the body.

        Leading dimensions (e.g. persons and frames) are broadcast against each other, so per-person
        betas of shape (P, 1, K) go with poses of shape (P, T, ...).

        Args:
            global_orient: (..., 3) axis-angle rotation of the pelvis about the pelvis joint.
            body_pose: (..., 69) axis-angle rotations of the other 23 joints, SMPL order.
            betas: (..., K) shape coefficients with K <= num_betas (zero-padded); None for zeros.
            transl: (..., 3) translation added after posing; None for zeros.

        Returns:
            vertices (..., V, 3) and joints (..., 24, 3).
        """
        dtype = self.smpl.v_template.dtype
        betas = global_orient.new_zeros(self.num_betas) if betas is None else betas
        transl = global_orient.new_zeros(3) if transl is None else transl
        if betas.shape[-1] > self.num_betas:
            raise ValueError(f"got {betas.shape[-1]} betas, the body model uses at most {self.num_betas}")
        betas = nn.functional.pad(betas, (0, self.num_betas - betas.shape[-1]))
        inputs = (global_orient, body_pose, betas, transl)
        lead = torch.broadcast_shapes(*(tensor.shape[:-1] for tensor in inputs))
        flat = [
            tensor.to(dtype).expand(*lead, tensor.shape[-1]).reshape(-1, tensor.shape[-1])
            for tensor in inputs
        ]
        output = self.smpl(global_orient=flat[0], body_pose=flat[1], betas=flat[2], transl=flat[3])
        return BodyOutput(
            output.vertices.reshape(*lead, self.num_vertices, 3),
            output.joints.reshape(*lead, NUM_JOINTS, 3),
        )


def load_body_model(source: BodySource | None, num_betas: int = 10) -> BodyModel:
    """Build the body model of `source` (the Hydra `body` config's target).

    Args:
        source: "procedural", a path to an SMPL-format `.npz` (or a folder holding `SMPL_NEUTRAL.npz`),
            or a mapping of SMPL arrays. None raises a FileNotFoundError explaining how to get SMPL.
        num_betas: number of shape coefficients used.
    """
    return BodyModel(source, num_betas)
