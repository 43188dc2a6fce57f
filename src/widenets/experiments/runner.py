"""Run experiments into an output folder: configs, run, plot, report, Ctrl-C handling."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from . import load
from .base import ConfigError, make_config
from .report import Report, check_no_report, check_writable

__all__ = ["prepare", "run_all"]


def prepare(figures: list[str], *, quick: bool, seed: int | None,
            overrides: dict[str, str]) -> list[tuple[object, object]]:
    """Load every module and build its config before any work starts, so that a bad `--set`
    fails at once. With several figures a key applies to those whose Config has it; a key that
    none has is an error.

    Returns:
        (module, config) pairs in the order given.
    Raises:
        ConfigError: unknown figure, unknown key, wrong type.
    """
    modules = [load(f) for f in figures]
    if len(modules) > 1:
        known = {f.name for m in modules for f in dataclasses.fields(m.Config)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"--set {unknown[0]}: no figure has this key; known keys: "
                              f"{', '.join(sorted(known))}")
    out = []
    for m in modules:
        names = {f.name for f in dataclasses.fields(m.Config)}
        mine = overrides if len(modules) == 1 else {k: v for k, v in overrides.items()
                                                    if k in names}
        out.append((m, make_config(m, quick=quick, seed=seed, overrides=mine)))
    return out


def _images(module, result, out: Path) -> list[tuple[str, str]]:
    """Plot one result; returns (file name, caption) of each PNG."""
    if hasattr(module, "plot_all"):
        return [(Path(p).name, c) for p, c in module.plot_all(result, out)]
    name = f"{module.ID}.png"
    module.plot(result, out / name)
    return [(name, getattr(module, "TITLE", module.ID))]


def run_all(jobs, out: Path, *, title: str, command: str, seed: int | None,
            log=print, overwrite: bool = False) -> Report:
    """Run each (module, config), writing PNGs, result.json and index.html into `out` after each.

    Ctrl-C stops the current figure; the report of the finished ones stays (status
    "interrupted") and KeyboardInterrupt is re-raised for the caller's exit code. A ValueError
    raised by a figure's run (a library function rejecting a configured value, e.g.
    `--set w_std=-1`) becomes a ConfigError naming the figure; the finished figures stay.

    Args:
        overwrite: replace a report already in `out`. Without it a folder that holds a
            previous run's result.json or index.html is refused (before any work): merging
            two runs' reports would mix configurations under one command line.

    Raises:
        OSError: `out` is not writable, or holds a report and overwrite is False (checked
            before any work).
        ConfigError: a figure rejected its configuration.
    """
    out = Path(out)
    check_writable(out)
    if not overwrite:
        check_no_report(out)
    report = Report(out, title=title, command=command, seed=seed)
    report.write()
    try:
        for module, config in jobs:
            log(f"[widenets] {module.ID}: running ({getattr(module, 'TITLE', '')})")
            t0 = time.perf_counter()
            try:
                result = module.run(config)
            except ConfigError:
                raise
            except ValueError as e:  # a value the config passed on was rejected downstream
                raise ConfigError(f"{module.ID}: the configuration was rejected: {e}") from e
            t_run = time.perf_counter() - t0
            images = _images(module, result, out)
            seconds = time.perf_counter() - t0
            result.timings.setdefault("run_s", round(t_run, 3))
            report.add(result, images, seconds=seconds)
            key = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in list(result.metrics.items())[:4])
            log(f"[widenets] {module.ID}: done in {seconds:.1f} s; {key}")
    except ConfigError:
        report.finish("failed")
        raise
    except KeyboardInterrupt:
        report.finish("interrupted")
        print(f"[widenets] interrupted; kept {len(report.entries)} finished figure(s) in "
              f"{out}", file=sys.stderr)
        raise
    report.finish("complete")
    log(f"[widenets] report: {out / 'index.html'}")
    return report
