"""Imports go downward only: model math never reaches HTTP, databases or security."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "atelier"
FORBIDDEN = {
    "engine": ("fastapi", "starlette", "sqlalchemy", "alembic", "atelier.security", "atelier.store", "atelier.api"),
    "prompts": ("fastapi", "starlette", "sqlalchemy", "atelier.security", "atelier.store", "atelier.api"),
    "store": ("fastapi", "starlette", "atelier.api", "atelier.engine", "atelier.security"),
    "security": ("fastapi", "starlette", "atelier.api", "atelier.engine"),
    "tuning": ("fastapi", "starlette", "sqlalchemy", "alembic", "atelier.security", "atelier.store", "atelier.api",
               "atelier.jobs", "atelier.cloud"),
    "jobs": ("fastapi", "starlette", "atelier.api"),
    # RAG is pure: bytes, text and numpy in; the store and the embedder are handed to it.
    "rag": ("fastapi", "starlette", "sqlalchemy", "alembic", "torch", "atelier.security", "atelier.store",
            "atelier.api", "atelier.jobs", "atelier.cloud", "atelier.engine"),
    # The console is a client of the HTTP API: it reaches the service only through atelier.client.
    "console": ("fastapi", "starlette", "sqlalchemy", "alembic", "torch", "atelier.api", "atelier.cloud",
                "atelier.store", "atelier.engine", "atelier.security", "atelier.jobs", "atelier.rag",
                "atelier.tuning"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upward(package):
    files = sorted((SRC / package).rglob("*.py"))
    if not files and package in ("tuning", "jobs"):
        pytest.skip(f"{package}/ has no modules yet")
    assert files, f"no modules found in {package}"
    bad = []
    for path in files:
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, "\n".join(bad)


def test_api_holds_no_model_math():
    bad = [
        str(p.relative_to(SRC))
        for p in (SRC / "api").rglob("*.py")
        if any(n == "torch" or n.startswith("torch.") for n in imported_modules(p))
    ]
    assert not bad, f"api modules import torch: {bad}"
