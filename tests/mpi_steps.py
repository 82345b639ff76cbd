"""Run under ``mpiexec -n N``: several data-parallel training steps against a one-process run of the same steps.

Every rank trains the same float64 model on its share of each global batch (``tinymixer.training.train.run_step``
with the communicator); rank 0 also trains a second copy on the whole batches alone. Prints one JSON line (rank 0):
the largest difference between the data-parallel weights and the one-process weights (relative to the largest
weight), and whether all ranks held bit-identical weights after every step (checked by an all-reduce of the largest
difference from rank 0's weights, which rank 0 broadcasts every step).
"""

from __future__ import annotations

import json
import sys

import numpy as np

import tinymixer as tm
from tinymixer.training import distributed
from tinymixer.training.train import run_step, train_step


def main(steps: int = 6, batch: int = 24) -> None:
    comm = distributed.init()
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (steps * batch, 8, 8, 3))
    labels = rng.integers(0, 5, steps * batch)
    config = dict(num_classes=5, num_blocks=2, patch_size=2, hidden_dim=12, tokens_mlp_dim=10, channels_mlp_dim=16,
                  image_size=8, dtype="float64", seed=3)
    parallel, alone = tm.MlpMixer(**config), tm.MlpMixer(**config)
    for model in (parallel, alone):  # a random head, so that every gradient is non-zero from the first step
        model.params["head/kernel"][...] = model.xp.asarray(0.1 * np.random.default_rng(1).standard_normal((12, 5)))
    opt_parallel, opt_alone = tm.SGD(momentum=0.9), tm.SGD(momentum=0.9)
    rows = distributed.shard_of(batch, comm)
    identical = True
    for step in range(steps):
        x, y = images[step * batch:(step + 1) * batch], labels[step * batch:(step + 1) * batch]
        # no clipping (0.0): it would hide a gradient of the wrong size (e.g. summed instead of averaged)
        run_step(parallel, opt_parallel, x[rows], y[rows], 0.1, 0.0, comm=comm, global_batch=batch)
        if comm.is_root:
            train_step(alone, opt_alone, x, y, 0.1, 0.0)
        reference = {k: v.copy() for k, v in parallel.params.items()}
        comm.broadcast_(reference)  # rank 0's weights on every rank
        spread = max(float(np.abs(parallel.params[k] - reference[k]).max()) for k in reference)
        identical &= comm.sum(spread) == 0.0
    if comm.is_root:
        scale = max(float(np.abs(v).max()) for v in alone.params.values())
        difference = max(float(np.abs(parallel.params[k] - alone.params[k]).max()) for k in alone.params)
        print(json.dumps({"ranks": comm.size, "relative_difference": difference / scale,
                          "bit_identical_across_ranks": bool(identical), "steps": steps}))


if __name__ == "__main__":
    distributed.run(lambda: main(*map(int, sys.argv[1:])))
