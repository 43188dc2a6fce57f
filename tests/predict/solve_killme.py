"""Subprocess for the solve kill test: a CG solve on a store, slowed down, checkpointing every
iteration, that the parent kills with SIGKILL partway.

Usage: python solve_killme.py STORE Y.npy CHECKPOINT. Prints READY, then solves (>= 0.02 s per
iteration) and prints FINISHED.
"""

import sys
import time

import numpy as np
import torch

import widenets as wn


class Slow(wn.tiles.StoreOperator):
    def matmul(self, v):
        time.sleep(0.02)
        return super().matmul(v)


if __name__ == "__main__":
    store, y_path, ckpt = sys.argv[1:4]
    y = torch.from_numpy(np.load(y_path))
    print("READY", flush=True)
    wn.predict.solve(Slow(store, get="ntk"), y, method="cg", preconditioner=None, tol=1e-8,
                     diag_reg=1e-1, checkpoint=ckpt, checkpoint_seconds=0)
    print("FINISHED", flush=True)
