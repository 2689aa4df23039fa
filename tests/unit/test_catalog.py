"""The catalog: built-in bundled models, and extra models as a config entry."""

import json

import pytest

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.errors import InvalidInput, NotFound


def test_builtins_resolve_to_installed_packages():
    cat = Catalog.load()
    chat = cat.get("smollm2-135m-instruct", kind="chat")
    assert (chat.source.directory() / chat.source.gguf_file).is_file()
    emb = cat.get("all-minilm-l6-v2", kind="embedding")
    assert (emb.source.directory() / "config.json").is_file()
    assert emb.dimensions == 384 and chat.capabilities == ["chat", "completion"]


def test_unknown_or_wrong_kind_is_not_found():
    cat = Catalog(BUILTIN)
    with pytest.raises(NotFound) as info:
        cat.get("nope")
    assert info.value.param == "model"
    with pytest.raises(NotFound):
        cat.get("all-minilm-l6-v2", kind="chat")


def test_extra_entry_from_config_file(tmp_path):
    entry = {"name": "local-llm", "kind": "chat", "source": {"path": str(tmp_path)}, "context_length": 1024}
    (tmp_path / "catalog.json").write_text(json.dumps([entry]))
    cat = Catalog.load(tmp_path / "catalog.json")
    assert cat.get("local-llm").source.directory() == tmp_path
    assert "smollm2-135m-instruct" in cat.names()


@pytest.mark.parametrize(
    "content",
    ["not json", json.dumps([{"name": "x"}]), json.dumps([{"name": "x", "kind": "chat", "source": {}}])],
)
def test_bad_config_file_is_invalid_input(tmp_path, content):
    (tmp_path / "c.json").write_text(content)
    with pytest.raises(InvalidInput) as info:
        Catalog.load(tmp_path / "c.json")
    assert info.value.param == "catalog_file"


def test_source_needs_exactly_one_location():
    with pytest.raises(ValueError):
        ModelSource(package="a", path="/b")
    with pytest.raises(NotFound):
        ModelSource(package="surely_not_installed_pkg").directory()
    with pytest.raises(ValueError):
        ModelSpec(name="bad name!", kind="chat", source=ModelSource(path="/x"))
