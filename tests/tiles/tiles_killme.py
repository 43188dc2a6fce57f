"""Subprocess for the kill tests: a slow tiled kernel that the parent kills partway.

Usage: python tiles_killme.py STORE. Prints READY, then computes 15 tiles at >= 0.15 s each.
"""

import signal
import sys
import time

from tiles_helpers import dyadic, relu_net

import widenets as wn

net = relu_net(3)


def slow_kernel(a, b, get):
    time.sleep(0.15)
    return net.kernel(a, b, get=get)


if __name__ == "__main__":
    # Ctrl-C raises KeyboardInterrupt even when this process inherited SIGINT ignored (as
    # background jobs of a non-interactive shell do).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("READY", flush=True)
    wn.tiles.compute(slow_kernel, dyadic(40, seed=11), store=sys.argv[1], batch_size=8,
                     description="killme: relu_net(3).kernel")
    print("FINISHED", flush=True)
