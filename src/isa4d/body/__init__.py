"""SMPL-format body models: the model layer, the procedural stand-in, the SMPL converter, surface points.

World frame: y up, metres; SMPL's 24 joints, joint order and kinematic tree; at zero pose the body
stands in a T-pose facing +z with its left side on +x. See docs/body.md.
"""

from isa4d.body.convert import convert_smpl_pickle, load_smpl_pickle
from isa4d.body.model import (
    PROCEDURAL,
    SMPL_NPZ_NAME,
    SMPL_PICKLE_NAME,
    BodyModel,
    BodyOutput,
    load_body_model,
    resolve_body_data,
)
from isa4d.body.procedural import (
    generate_procedural_body,
    procedural_body_data,
    rest_joints,
    write_procedural_npz,
)
from isa4d.body.sampler import SurfaceSampler
from isa4d.body.skeleton import JOINT_INDEX, JOINT_NAMES, NUM_JOINTS, PARENTS, descendants
from isa4d.body.storage import SMPL_KEYS, canonical_body_arrays, load_body_npz, save_body_npz

__all__ = [
    "JOINT_INDEX",
    "JOINT_NAMES",
    "NUM_JOINTS",
    "PARENTS",
    "PROCEDURAL",
    "SMPL_KEYS",
    "SMPL_NPZ_NAME",
    "SMPL_PICKLE_NAME",
    "BodyModel",
    "BodyOutput",
    "SurfaceSampler",
    "canonical_body_arrays",
    "convert_smpl_pickle",
    "descendants",
    "generate_procedural_body",
    "load_body_model",
    "load_body_npz",
    "load_smpl_pickle",
    "procedural_body_data",
    "resolve_body_data",
    "rest_joints",
    "save_body_npz",
    "write_procedural_npz",
]
