"""One Settings object for the whole service: embedded defaults, environment overrides.

This module is the only reader of ``os.environ`` (variables ``ATELIER_*``). It also
forces Hugging Face libraries offline before any of them is imported: no model or
data set is ever fetched from a hub at run time.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _default_threads() -> int:
    """Threads for torch: the cores this process may use (2 OpenMP threads on a loaded
    2-core machine can be slower than one, so callers may lower it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Service configuration. Every field can be set as ``ATELIER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_", extra="ignore")

    data_dir: Path = Field(Path("~/.atelier"), description="Directory for the database, objects and keys.")
    cache_dir: Path = Field(
        Path("~/.cache/atelier"),
        description="Directory for converted model weights (safe to share between data dirs).",
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir.")
    admin_key: SecretStr | None = Field(None, description="Administrator API key to install on first start.")
    host: str = Field("127.0.0.1", description="Address the HTTP service binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP service binds.")
    catalog_file: Path | None = Field(None, description="JSON file of extra catalog entries (local HF model dirs).")
    default_chat_model: str = Field("smollm2-135m-instruct", description="Chat model used when none is named.")
    default_embedding_model: str = Field("all-minilm-l6-v2", description="Embedding model used when none is named.")
    vector_store: Literal["chroma", "pgvector"] = Field(
        "chroma",
        description="Where knowledge-base vectors and keywords live: 'chroma' (Chroma in data_dir + SQLite FTS5 in "
        "the metadata database) or 'pgvector' (PostgreSQL at vector_database_url).",
    )
    vector_database_url: str | None = Field(
        None, description="SQLAlchemy URL of the pgvector database (postgresql+psycopg://...); vector_store=pgvector."
    )
    units_file: Path | None = Field(
        None, description="JSON unit table (unit types, what each can do, price per unit-hour); default: the bundled one."
    )
    default_tenancy_units: str = Field(
        "small=16,large=0,embed=2",
        description="Unit limits the `default` tenancy gets on the very first start (other tenancies start at 0).",
    )
    threads: int = Field(default_factory=_default_threads, ge=1, le=256, description="torch intra-op threads.")
    quantization: str | None = Field(
        None,
        pattern=r"^(none|int8|int4)$|^([A-Za-z0-9._:-]+=(none|int8|int4))(,[A-Za-z0-9._:-]+=(none|int8|int4))*$",
        description="Overrides the catalog's weight quantization of served chat models: 'none', 'int8' or 'int4' "
        "for all, or per model ('smollm2-135m-instruct=int8,other=none').",
    )
    prefix_cache_mb: float = Field(
        256, ge=0, le=1_000_000,
        description="Memory per served chat model for the keys and values of prompt prefixes, reused by later "
        "prompts of the same tenancy and adapter that start the same way (0 turns prefix caching off).",
    )  # fmt: skip
    max_batch: int = Field(32, ge=1, le=512, description="Sequences decoded together in one forward pass.")
    max_waiting: int = Field(64, ge=0, le=100_000, description="Requests queued beyond max_batch before 429.")
    adapter_memory_mb: float = Field(
        1024, gt=0, le=1_000_000,
        description="Memory for the adapters served over shared base weights; least recently used idle ones are "
        "evicted past it.",
    )  # fmt: skip
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest accepted request body (413 above).")
    max_file_bytes: int = Field(
        100 * 1024 * 1024, ge=1, le=2**31 - 1024, description="Largest file accepted by POST /v1/files (413 above)."
    )
    device: str = Field("cpu", description="torch device for the in-process engine ('cpu' or 'cuda').")
    engine: Literal["local", "vllm"] = Field(
        "local",
        description="What serves chat models: 'local' (the in-process engine) or 'vllm' (vLLM OpenAI servers at "
        "vllm_url; embeddings stay in-process).",
    )
    vllm_url: str | None = Field(
        None, description="Base URL of a vLLM OpenAI server (engine=vllm), or several separated by commas."
    )
    vllm_adapter_dir: Path | None = Field(
        None,
        description="Directory the vLLM servers read adapters from (engine=vllm); Atelier writes each hosted "
        "adapter there under an opaque name while it is loaded. Default <data_dir>/vllm-adapters.",
    )
    jobs: Literal["local", "ray"] = Field(
        "local", description="Where jobs run: 'local' (worker processes of `atelier serve`) or 'ray' (ray_address)."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster address for jobs=ray ('auto', 'ray://host:10001', or 'local' to start one)."
    )
    object_store: str | None = Field(
        None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        description="s3://bucket/prefix keeps sealed objects in an S3-compatible bucket (endpoint and credentials "
        "from the usual AWS_* variables, or s3_endpoint_url); default: the local directory <data_dir>/objects.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of the S3-compatible service (default: AWS_ENDPOINT_URL, else AWS itself)."
    )
    worker_restart_seconds: float = Field(
        1.0, ge=0.1, le=60, description="Delay before `serve` restarts a job worker that ended; doubled at each quick "
        "death up to a minute.",
    )
    url: str = Field("http://127.0.0.1:8000", description="Base URL of the service, for the CLI and the client.")
    api_key: SecretStr | None = Field(
        None, description="API key the CLI and the client send; default: <data_dir>/admin.key when present."
    )
    root_key: SecretStr | None = Field(
        None,
        description="Root secret of the key rings, base64 of 32 bytes; default: read from root_key_file.",
    )
    root_key_file: Path | None = Field(
        None,
        description="File holding the root secret (mode 0600, created on first start); default <data_dir>/root.key.",
    )
    rate_requests_per_minute: int = Field(
        60_000,
        ge=1,
        le=10_000_000,
        description="Requests a tenancy may make per minute (default of every tenancy). The default, 1,000 a "
        "second, is out of reach of one client sending requests one after another (the cheapest request takes "
        "about 6 ms on a 2-core machine): it stops floods of parallel requests, not a user's own loop; the "
        "operator sets a tenancy's own limits with `atelier admin limits set`.",
    )
    rate_concurrent_generations: int = Field(
        32, ge=1, le=100_000, description="Generations a tenancy may run at once (default: a whole engine batch)."
    )
    rate_tokens_per_minute: int = Field(
        200_000, ge=1, le=10**12, description="Prompt + completion tokens a tenancy may use per minute (default)."
    )
    alert_webhook_url: str | None = Field(None, description="URL each anomaly alert is POSTed to as JSON (optional).")
    alert_window_seconds: int = Field(60, ge=1, le=86_400, description="Sliding window of the anomaly detectors.")
    alert_unauthenticated_burst: int = Field(
        20, ge=1, le=1_000_000, description="401s from one address within the window that raise an alert."
    )
    alert_not_found_burst: int = Field(
        20, ge=1, le=1_000_000, description="404s on object ids from one key within the window that raise an alert."
    )
    alert_token_spike_factor: float = Field(
        10.0,
        gt=1,
        le=1_000_000,
        description="A tenancy's tokens in the last minute above this × its trailing per-minute average alert.",
    )
    alert_token_spike_floor: int = Field(
        20_000, ge=1, le=10**12, description="Tokens per minute below which no usage spike is raised."
    )
    alert_token_baseline_minutes: int = Field(
        60, ge=1, le=10_080, description="Minutes of usage the trailing average of the spike detector spans."
    )

    def quantization_of(self, model: str, catalog_default: str) -> str:
        """The weight quantization to serve ``model`` with: this setting's, else the catalog's."""
        if self.quantization is None:
            return catalog_default
        if "=" not in self.quantization:
            return self.quantization
        pairs = dict(item.split("=", 1) for item in self.quantization.split(","))
        return pairs.get(model, catalog_default)

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser()

    @property
    def cache_path(self) -> Path:
        return self.cache_dir.expanduser()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'atelier.db'}"

    @property
    def root_key_path(self) -> Path:
        """Where the root secret is read from (and written on first start) when ``root_key`` is unset."""
        return (self.root_key_file or self.data_path / "root.key").expanduser()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
