"""Shared test fixtures: the reference facts folder (``../shared`` next to the checkout).

``shared/reference/keys/*.json`` hold the reference implementation's published state-dict layouts. Tests that
compare against them use the ``reference_keys`` fixture: outside CI a missing folder skips those tests; with
``CI=true`` in the environment it fails them, so a CI job can never pass by silently skipping the layout checks.
``VIDEOACTION_SHARED_DIR`` points elsewhere when the folder does not sit next to the checkout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def shared_dir() -> Path:
    """The ``shared`` folder: ``$VIDEOACTION_SHARED_DIR`` or ``<checkout>/../shared``."""
    override = os.environ.get("VIDEOACTION_SHARED_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / ".." / "shared"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def load_reference_keys(name: str) -> dict[str, list[int]]:
    """``shared/reference/keys/<name>`` as {parameter name: shape}; skip (fail under CI) when it is missing."""
    path = shared_dir() / "reference" / "keys" / name
    if not path.is_file():
        msg = f"reference key list {path} not found (set VIDEOACTION_SHARED_DIR or check out ../shared)"
        if _in_ci():
            pytest.fail(msg + "; CI must run the layout checks", pytrace=False)
        pytest.skip(msg)
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def reference_keys():
    """A loader: ``reference_keys("uva_pusht_keys.json")`` -> {name: shape}."""
    return load_reference_keys


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (tiny models run faster so on a shared 2-core machine), restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
