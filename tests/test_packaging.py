"""The CPU lock file pins every dependency that pyproject.toml declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _applies_here(requirement: str) -> bool:
    marker = Requirement(requirement).marker
    return marker is None or marker.evaluate()


def test_lock_pins_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    declared = {_name(r) for r in requirements if _applies_here(r)}
    lines = (ROOT / "requirements" / "cpu.lock").read_text().splitlines()
    pinned = {_name(line): line for line in lines if line and not line.startswith("#")}
    assert declared <= set(pinned), f"not in the lock: {sorted(declared - set(pinned))}"
    assert all("==" in line for line in pinned.values()), "every lock line must be an exact pin"
    assert pinned["torch"] == "torch==2.14.1"
