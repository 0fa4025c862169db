"""The SMPL skeleton: joint names, order and kinematic tree (shared by every body model)."""

from __future__ import annotations

JOINT_NAMES: tuple[str, ...] = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hand",
    "right_hand",
)
"""The 24 SMPL joints in SMPL order."""

PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
"""Parent index of each joint (-1 for the root), SMPL's `kintree_table[0]`."""

NUM_JOINTS = len(JOINT_NAMES)
JOINT_INDEX: dict[str, int] = {name: index for index, name in enumerate(JOINT_NAMES)}


def descendants(joint: int) -> set[int]:
    """Indices of `joint` and of every joint below it in the kinematic tree."""
    found = {joint}
    for child, parent in enumerate(PARENTS):
        if parent in found:
            found.add(child)
    return found
