"""Run under ``mpiexec -n 2``: examples/cifar10.py whose training step raises on rank 1 at the step given by
$FAULT_AT_STEP (counted over the whole run), as a bug or a lost node would. The job must end, not hang."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tinymixer.training import distributed

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "cifar10.py"
spec = importlib.util.spec_from_file_location("cifar10_script", SCRIPT)
cifar10 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cifar10)

real_step, calls = cifar10.run_step, []


def failing_step(*args, **kwargs):
    calls.append(1)
    if distributed.world().rank == 1 and len(calls) == int(os.environ["FAULT_AT_STEP"]):
        raise RuntimeError("a fault injected on rank 1")
    return real_step(*args, **kwargs)


cifar10.run_step = failing_step
distributed.run(cifar10.main, expected=(cifar10.DataError, cifar10.CheckpointError))
