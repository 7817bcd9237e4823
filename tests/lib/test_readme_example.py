"""The library example in README.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from epropnp_lib.pnp.solver import SolveStatus

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    sol, samples, loss = namespace["sol"], namespace["samples"], namespace["loss"]
    assert isinstance(loss, torch.Tensor) and torch.isfinite(loss)
    assert samples.shape == (100, 8, 7)  # type: ignore[attr-defined]
    assert (sol.status == SolveStatus.CONVERGED).all()  # type: ignore[attr-defined]
    assert namespace["ros_cov"].shape == (8, 36)  # type: ignore[attr-defined]
