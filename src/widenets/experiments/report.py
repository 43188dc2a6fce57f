"""The report of a run: PNG figures, `result.json` and `index.html` in one output folder.

Both files are rewritten (atomically) after every finished figure, so an interrupted run keeps
every figure it finished and a valid report of them.
"""

from __future__ import annotations

import html
import json
import os
import platform
import time
from pathlib import Path

from .base import Result, to_jsonable

__all__ = ["Report", "OutputError", "versions", "check_writable", "check_no_report"]


class OutputError(OSError):
    """The output folder cannot be created or written."""


def versions() -> dict[str, str]:
    """Versions of Python, widenets and the libraries that shape the numbers."""
    import numpy
    import torch

    from .. import __version__

    out = {"python": platform.python_version(), "widenets": __version__,
           "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("scipy", "sklearn", "matplotlib"):
        try:
            mod = __import__(name)
            out[name] = mod.__version__
        except ImportError:  # pragma: no cover - all are dependencies
            pass
    out["threads"] = str(torch.get_num_threads())
    return out


def check_writable(out: Path) -> None:
    """Create `out` and check a file can be written there; OSError with a clear message if not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".widenets-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write to --out {str(out)!r}: {e.strerror or e}") from None


def check_no_report(out: Path) -> None:
    """OutputError when `out` already holds a report (result.json or index.html) with results.

    A second run into the same folder would silently replace the first run's numbers; the
    caller passes --overwrite to replace them on purpose. A report of a run that finished no
    figure (it failed or was interrupted at once) holds no results and may be replaced.
    """
    found = [name for name in ("result.json", "index.html") if (Path(out) / name).exists()]
    if not found:
        return
    what = ""
    try:
        old = json.loads((Path(out) / "result.json").read_text(encoding="utf-8"))
        if old.get("figures") == {}:
            return
        what = f" of `{old.get('command')}`, status {old.get('status')}"
    except (OSError, ValueError, AttributeError):
        pass
    raise OutputError(f"--out {str(out)!r} already holds a report ({' and '.join(found)}"
                      f"{what}); pass --overwrite to replace it, or choose another --out")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


class Report:
    """Collects finished figures and writes the report files of one output folder.

    Args:
        out: the output folder (created).
        title: the report's heading.
        command: the command line that produced it (shown in the report).
        seed: the seed the run used (None when each figure has its own).
    """

    def __init__(self, out: Path, *, title: str, command: str, seed: int | None):
        self.out = Path(out)
        self.title = title
        self.command = command
        self.seed = seed
        self.entries: list[dict] = []
        self.status = "running"
        self.started = time.time()

    def add(self, result: Result, images: list[tuple[str, str]], *, seconds: float) -> None:
        """Record one finished figure and rewrite result.json and index.html.

        Args:
            result: what the experiment's run returned.
            images: (file name relative to `out`, caption) of each PNG it wrote.
            seconds: wall time of run + plot.
        """
        self.entries.append({
            "figure": result.figure, "caption": result.caption,
            "config": to_jsonable(result.config), "metrics": to_jsonable(result.metrics),
            "timings": {**to_jsonable(result.timings), "total_s": round(seconds, 3)},
            "images": [{"file": f, "caption": c} for f, c in images],
        })
        self.write()

    def finish(self, status: str = "complete") -> None:
        self.status = status
        self.write()

    # ---------------------------------------------------------------------- files
    def as_dict(self) -> dict:
        return {"title": self.title, "command": self.command, "status": self.status,
                "seed": self.seed, "versions": versions(),
                "elapsed_s": round(time.time() - self.started, 3),
                "figures": {e["figure"]: e for e in self.entries}}

    def write(self) -> None:
        _atomic_write(self.out / "result.json", json.dumps(self.as_dict(), indent=2) + "\n")
        _atomic_write(self.out / "index.html", self.html())

    def html(self) -> str:
        esc = html.escape
        d = self.as_dict()
        parts = [
            "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
            "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
            "figure{margin:1em 0}figcaption{color:#333}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
            f"<p><code>{esc(self.command)}</code> &mdash; status: <b>{esc(self.status)}</b>, "
            f"{d['elapsed_s']:.1f} s; "
            + ", ".join(f"{esc(k)} {esc(v)}" for k, v in d["versions"].items()) + "</p>",
        ]
        if self.status != "complete":
            parts.append("<p><b>This run did not finish: only the figures below were "
                         "completed.</b></p>")
        for e in self.entries:
            parts.append(f"<h2 id='{esc(e['figure'])}'>{esc(e['figure'])}</h2>")
            parts.append(f"<p>{esc(e['caption'])}</p>")
            for img in e["images"]:
                parts.append(f"<figure><img src='{esc(img['file'])}' alt='{esc(img['caption'])}'>"
                             f"<figcaption>{esc(img['caption'])}</figcaption></figure>")
            parts.append("<table><tr><th>key number</th><th>value</th></tr>")
            for k, v in e["metrics"].items():
                parts.append(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>")
            parts.append("</table>")
            cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in e["config"].items())
            t = ", ".join(f"{k} {_fmt(v)} s" for k, v in e["timings"].items())
            parts.append(f"<p><small>config: {esc(cfg)}<br>timings: {esc(t)}</small></p>")
        parts.append("</body></html>\n")
        return "\n".join(parts)
