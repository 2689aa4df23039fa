"""Shared plumbing for benchmarks: timing samples, the result table, JSON output, a server.

Knows nothing about models: a benchmark measures an Atelier figure and a baseline figure
in the same run, repeats both (interleaved, so that a noisy neighbour hurts both alike),
and hands the samples here to be summarised as medians and ratios.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One line of the result table: an Atelier figure next to its baseline (higher is better)."""

    name: str
    """What was measured, e.g. ``decode batch 1``."""
    unit: str
    """Unit of both figures, e.g. ``tok/s``."""
    atelier: list[float] = field(default_factory=list)
    """Atelier's samples, one per repeat."""
    baseline: list[float] = field(default_factory=list)
    """The baseline's samples, one per repeat (empty when there is none)."""
    baseline_name: str = ""
    """What the baseline is, e.g. ``transformers generate``."""
    note: str = ""
    """Anything a reader needs to interpret the figure."""

    @property
    def atelier_median(self) -> float | None:
        return statistics.median(self.atelier) if self.atelier else None

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def ratio(self) -> float | None:
        """Atelier / baseline, on medians (above 1: Atelier is faster)."""
        a, b = self.atelier_median, self.baseline_median
        return a / b if a is not None and b else None

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(atelier_median=self.atelier_median, baseline_median=self.baseline_median, ratio=self.ratio)
        return out


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def format_table(rows: list[Row]) -> str:
    """A plain-text table: name, Atelier median, baseline median, ratio, unit, baseline."""
    header = ("benchmark", "atelier", "baseline", "ratio", "unit", "baseline is")
    lines = [
        (
            r.name,
            _fmt(r.atelier_median),
            _fmt(r.baseline_median),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.unit,
            r.baseline_name,
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    align = ["<", ">", ">", ">", "<", "<"]

    def fmt(cells) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

    out = [fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(line) for line in lines]
    notes = [f"  [{i}] {r.name}: {r.note}" for i, r in enumerate(rows, 1) if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def machine_info(threads: int) -> dict:
    """What the figures depend on: cores, threads, load, versions."""
    import torch
    import transformers

    load1, load5, load15 = os.getloadavg()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_at_start": [load1, load5, load15],
    }


def write_json(name: str, payload: dict, path: Path | None = None) -> Path:
    """Write ``payload`` to ``path`` or ``bench/results/<name>-<timestamp>.json``."""
    if path is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(proc: subprocess.Popen, url: str, timeout: float, what: str) -> None:
    """Poll ``url`` + ``/health`` until it answers 200; RuntimeError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer /health within {timeout:.0f} s")


async def sse_chunks(response: httpx.Response, endpoint: str):
    """The JSON chunks of a streamed OpenAI-style response (``data: …`` lines, ``[DONE]`` left out).

    Raises:
        RuntimeError: a status other than 200, or an error chunk in the stream.
    """
    if response.status_code != 200:
        await response.aread()
        raise RuntimeError(f"{endpoint} answered {response.status_code}: {response.text[:300]}")
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(f"stream error: {chunk['error']}")
        yield chunk


class ServerProcess:
    """``python -m atelier serve`` on a free port and a temporary data dir, as a context manager.

    Args:
        env: Extra environment variables for the server (e.g. ``ATELIER_THREADS``).
        startup_timeout: Seconds to wait for ``GET /health``.
    """

    ADMIN_KEY = "bench-admin-key-0123456789abcdef"

    def __init__(self, env: dict[str, str] | None = None, startup_timeout: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = env or {}
        self._timeout = startup_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="atelier-bench-")
        self._log_path = Path(self._tmp.name) / "server.log"
        self._proc: subprocess.Popen | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ADMIN_KEY}"}

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> "ServerProcess":
        unlimited = {  # a benchmark measures throughput, not the per-tenancy request limits
            "ATELIER_RATE_REQUESTS_PER_MINUTE": "1000000",
            "ATELIER_RATE_CONCURRENT_GENERATIONS": "1000",
            "ATELIER_RATE_TOKENS_PER_MINUTE": "1000000000",
        }
        env = {**os.environ, **unlimited, **self._env, "ATELIER_ADMIN_KEY": self.ADMIN_KEY}
        data_dir = f"{self._tmp.name}/data"
        cmd = [sys.executable, "-m", "atelier", "serve", "--port", str(self.port), "--data-dir", data_dir]
        log = open(self._log_path, "wb")
        self._proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_for_health(self._proc, self.url, self._timeout, "the server")
        except RuntimeError as exc:
            tail = self.log_tail()
            self.__exit__(None, None, None)
            raise RuntimeError(f"{exc}:\n{tail}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        self._tmp.cleanup()
