"""Dependency floors sit at the releases that fixed known vulnerabilities, every runtime
dependency has an upper bound at a tested major, and the default ViT checkpoint is pinned."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
SECURITY_FLOORS = {  # package -> first release with the fix
    "torch": "2.6",  # CVE-2025-32434: torch.load(weights_only=True) bypass
    "python-multipart": "0.0.18",  # CVE-2024-53981
    "starlette": "0.47.2",  # CVE-2025-54121
    "pyarrow": "14.0.1",  # CVE-2023-47248
    "pillow": "10.3",  # CVE-2024-28219
}


def runtime_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    return {r.name.lower(): r for r in requirements}


def lowest_allowed(requirement: Requirement) -> Version | None:
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    return min(floors) if floors else None


@pytest.mark.parametrize("package, fixed", sorted(SECURITY_FLOORS.items()))
def test_floor_excludes_releases_with_the_known_vulnerability(package, fixed):
    requirement = runtime_requirements()[package]
    floor = lowest_allowed(requirement)
    assert floor is not None and floor >= Version(fixed), f"{requirement} admits releases before {fixed}"


def test_every_runtime_dependency_has_an_upper_bound():
    unbounded = [
        str(r)
        for r in runtime_requirements().values()
        if not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)
    ]
    assert not unbounded, f"no upper bound: {unbounded}"


def test_default_vit_checkpoint_is_loaded_at_a_pinned_revision(monkeypatch):
    from transformers import ViTForImageClassification

    from shared.errors import WeightsUnavailable
    from shared.models import vit_b16

    assert re.fullmatch(r"[0-9a-f]{40}", vit_b16.HF_REVISION)
    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise OSError("offline")

    monkeypatch.setattr(ViTForImageClassification, "from_pretrained", offline)
    with pytest.raises(WeightsUnavailable, match=vit_b16.HF_REVISION):
        vit_b16.build("default", {})
    assert calls == [((vit_b16.HF_ID,), {"revision": vit_b16.HF_REVISION})]
