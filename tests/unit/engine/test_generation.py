"""Streaming detokenization and stop strings (byte tokenizer: every UTF-8 byte is a token)."""

import pytest

from atelier.engine.generation import TextStream, _held_back
from atelier.engine.loading import tiny_tokenizer

TOK = tiny_tokenizer()


def stream_all(text: str, stop=()) -> tuple[list[str], TextStream]:
    ts = TextStream(TOK, tuple(stop))
    deltas = []
    for token in TOK.encode(text):
        deltas.append(ts.push(token))
        if ts.stopped:
            break
    deltas.append(ts.flush())
    return deltas, ts


@pytest.mark.parametrize("text", ["hello world", "héllo", "日本語のテキスト", "emoji 🎉 ok", "ß" * 5])
def test_deltas_concatenate_to_text_and_never_split_a_character(text):
    deltas, _ = stream_all(text)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_multibyte_character_is_emitted_whole():
    ts = TextStream(TOK)
    first, second = TOK.encode("é")  # two bytes, two tokens
    assert ts.push(first) == ""
    assert ts.push(second) == "é"


@pytest.mark.parametrize(
    "text, stop, expected",
    [
        ("The answer is 42. Done", ["."], "The answer is 42"),
        ("abc STOP def", ["STOP"], "abc "),
        ("abc def", ["xyz"], "abc def"),
        ("first\n\nsecond", ["\n\n", "sec"], "first"),
        ("aaSTOPbb", ["ST", "STOP"], "aa"),
    ],
)
def test_stop_strings_cut_the_text(text, stop, expected):
    deltas, ts = stream_all(text, stop)
    assert "".join(deltas) == expected
    assert ts.stopped == (expected != text)


def test_possible_stop_prefix_is_held_back_then_released():
    ts = TextStream(TOK, ("END",))
    out = [ts.push(t) for t in TOK.encode("xEN")]
    assert "".join(out) == "x"  # "EN" could still become "END"
    out.append(ts.push(TOK.encode("d")[0]))
    assert "".join(out) == "xENd"


@pytest.mark.parametrize(
    "text, stops, n", [("abc", ("cd",), 1), ("abc", ("bcx",), 2), ("abc", ("zz",), 0), ("", ("a",), 0)]
)
def test_held_back(text, stops, n):
    assert _held_back(text, stops) == n


def _sequence(loop_guard: bool, max_new: int = 100):
    from atelier.engine.generation import Sequence
    from atelier.engine.types import GenerationRequest, SamplingParams

    request = GenerationRequest("r", [1], SamplingParams(max_tokens=max_new, loop_guard=loop_guard))
    return Sequence(request=request, stream=TextStream(TOK), eos_ids=frozenset(), max_new=max_new)


def test_the_loop_guard_stops_a_generation_that_repeats_itself():
    looping = TOK.encode("abcd" * 10)
    seq = _sequence(loop_guard=True)
    events = []
    for token in looping:
        events.append(seq.append(token))
        if seq.finish_reason:
            break
    assert events[-1].finish_reason == "stop" and events[-1].stopped_by == "repetition"
    assert len(seq.output_ids) == 4 * 3  # "abcd" seen a third time
    assert "".join(e.text for e in events) == "abcd" * 3
    plain = _sequence(loop_guard=False)
    assert not any(plain.append(t).finish_reason for t in looping)  # off: it runs to max_tokens
    varied = _sequence(loop_guard=True)
    assert not any(varied.append(t).finish_reason for t in TOK.encode("the quick brown fox jumps over the lazy dog"))
