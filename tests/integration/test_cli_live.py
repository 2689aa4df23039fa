"""The ``atelier`` command line against a live server, configured by ``ATELIER_URL`` and ``ATELIER_API_KEY``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"
USAGE_RE = re.compile(r"usage: (\d+) prompt \+ (\d+) completion = (\d+) tokens")


@pytest.fixture(scope="module")
def cli_env(base_url: str, admin_key: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(
        ATELIER_URL=base_url,
        ATELIER_API_KEY=admin_key,
        # an empty data dir: the CLI must not fall back on a real ~/.atelier/admin.key
        ATELIER_DATA_DIR=str(tmp_path_factory.mktemp("cli-data")),
        PYTHONUNBUFFERED="1",
    )
    return env


def atelier(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m atelier <args>``; with ``ok``, assert it exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "atelier", *args], env=env, capture_output=True, text=True, timeout=180
    )
    if ok:
        assert result.returncode == 0, f"atelier {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return result


def usage_of(result: subprocess.CompletedProcess) -> tuple[int, int, int]:
    match = USAGE_RE.search(result.stderr)
    assert match, f"no usage line in stderr: {result.stderr!r}"
    prompt, completion, total = map(int, match.groups())
    assert total == prompt + completion
    return prompt, completion, total


def test_models_lists_both_bundled_models(cli_env) -> None:
    out = atelier(cli_env, "models").stdout
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["ID", "CAPABILITIES"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[CHAT_MODEL][1] == "chat,completion"
    assert rows[EMBEDDING_MODEL][1] == "embedding"
    assert "384" in rows[EMBEDDING_MODEL]


def test_chat_streams_the_answer(cli_env) -> None:
    question = "What is the capital of Japan?"
    streamed = atelier(cli_env, "chat", question, "--temperature", "0", "--max-tokens", "12", "--usage")
    assert "Tokyo" in streamed.stdout
    _, completion, _ = usage_of(streamed)
    assert 0 < completion <= 12
    whole = atelier(cli_env, "chat", question, "--temperature", "0", "--max-tokens", "12", "--no-stream")
    assert whole.stdout == streamed.stdout


def test_chat_k_shot_examples_and_cot_reach_the_prompt(cli_env) -> None:
    base = ("--temperature", "0", "--max-tokens", "8", "--usage")
    plain = usage_of(atelier(cli_env, "chat", "4+4", *base))[0]
    shots = atelier(cli_env, "chat", "4+4", "--example", "2+2=>4", "--example", "3+3=>6", *base)
    assert shots.stdout.strip()
    assert usage_of(shots)[0] > plain  # the examples became turns of the prompt
    cot = atelier(cli_env, "chat", "4+4", "--cot", *base)
    assert cot.stdout.strip()
    assert usage_of(cot)[0] > plain  # the step-by-step instruction was added


def test_chat_system_prompt_is_the_rendered_system_turn(cli_env) -> None:
    system, question = "You are a pirate.", "Who are you?"
    result = atelier(cli_env, "chat", question, "--system", system, "--temperature", "0", "--max-tokens", "8", "--usage")
    assert result.stdout.strip()
    rendered = (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    counted = json.loads(atelier(cli_env, "tokenize", rendered, "--json").stdout)
    assert usage_of(result)[0] == counted["count"]


def test_embed_prints_vectors(cli_env) -> None:
    out = json.loads(atelier(cli_env, "embed", "hello world", "bonjour le monde").stdout)
    assert out["model"] == EMBEDDING_MODEL
    assert out["dimensions"] == 384
    assert len(out["vectors"]) == 2 and all(len(v) == 384 for v in out["vectors"])


def test_tokenize_prints_ids_strings_and_count(cli_env) -> None:
    raw = json.loads(atelier(cli_env, "tokenize", "Hello world", "--json").stdout)
    assert raw["count"] == len(raw["ids"]) > 0
    assert "".join(raw["tokens"]) == "Hello world"
    text = atelier(cli_env, "tokenize", "Hello world").stdout
    assert re.search(r"^count:\s+%d$" % raw["count"], text, re.M)
    assert "Hello" in text.split("tokens:")[1].splitlines()[0]


def test_bad_input_and_bad_key_exit_1_with_one_line(cli_env, tmp_path: Path) -> None:
    bad = atelier(cli_env, "chat", "hi", "--temperature", "3", ok=False)
    assert bad.returncode == 1
    assert "param: temperature" in bad.stderr and "Traceback" not in bad.stderr
    wrong = atelier({**cli_env, "ATELIER_API_KEY": "wrong-key-0123456789abcdef"}, "models", ok=False)
    assert wrong.returncode == 1
    assert "ATELIER_API_KEY" in wrong.stderr and "Traceback" not in wrong.stderr
