"""Reproductions of the seed papers' figures and the demo, one module per figure.

    from widenets import experiments
    experiments.available()                  # ids of the reproducible figures
    mod = experiments.load("kernel-regression")
    result = mod.run(mod.Config(depths=(1, 2, 3)))
    mod.plot(result, "kr.png")

The command line (`widenets reproduce ...`) goes through `experiments.runner`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .base import ConfigError, Result, make_config

__all__ = ["FIGURES", "available", "load", "Result", "ConfigError", "make_config"]

# figure id -> module (in the order `reproduce all` runs them). Only figures whose library
# parts exist are listed.
FIGURES: dict[str, str] = {
    "kernel-regression": "widenets.experiments.kernel_regression",
    "lee-fig1": "widenets.experiments.lee_fig1",
    "lee-fig2": "widenets.experiments.lee_fig2",
    "lee-fig3": "widenets.experiments.lee_fig3",
    "blog-scaling": "widenets.experiments.blog_scaling",
    "blog-alpha": "widenets.experiments.blog_alpha",
    "hanin-nica": "widenets.experiments.hanin_nica",
    "nth": "widenets.experiments.nth",
    "attention": "widenets.experiments.attention",
    "lee-fig4": "widenets.experiments.lee_fig4",
    "lee-s3": "widenets.experiments.lee_s3",
    "lee-s5": "widenets.experiments.lee_s5",
}

DEMO = "widenets.experiments.demo"


def available() -> list[str]:
    """The ids of the reproducible figures.

    Example:
        >>> from widenets import experiments
        >>> "lee-fig2" in experiments.available()
        True
    """
    return list(FIGURES)


def load(figure: str) -> ModuleType:
    """The experiment module of `figure` ('demo' for the demo).

    Raises:
        ConfigError: unknown id (the message lists the known ones).

    Example:
        >>> from widenets import experiments
        >>> module = experiments.load("lee-fig2")
        >>> hasattr(module, "run") and hasattr(module, "Config")
        True
    """
    if figure == "demo":
        return importlib.import_module(DEMO)
    if figure not in FIGURES:
        raise ConfigError(f"unknown figure {figure!r}; choose one of: "
                          f"{', '.join(FIGURES) or '(none yet)'} or 'all' (see --list)")
    return importlib.import_module(FIGURES[figure])
