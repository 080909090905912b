import pytest

from nano_reasoner import tasks
from nano_reasoner.tokenizer import BOS_ID, EOS_ID, Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def traces():
    problems = tasks.generate("arith", 600, seed=0) + tasks.generate("countdown", 300, seed=0, difficulties=(3, 4))
    return [tasks.full_trace(p, granularity) for p in problems for granularity in tasks.GRANULARITIES]


@pytest.fixture(scope="module")
def tokenizer(traces, tmp_path_factory):
    return train_tokenizer(traces[::4], str(tmp_path_factory.mktemp("tok") / "tok.model"))


def test_round_trip_is_exact_on_every_generated_trace(tokenizer, traces):
    held_out = [tasks.full_trace(p, "digits") for p in tasks.generate("arith", 500, seed=9)]
    for text in traces + held_out:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_markers_are_single_tokens(tokenizer):
    assert tokenizer.encode("<think>") == [tokenizer.think_id]
    assert tokenizer.encode("</think>") == [tokenizer.end_think_id]
    assert tokenizer.encode("\n") == [tokenizer.step_end_id]
    assert len({tokenizer.think_id, tokenizer.end_think_id, tokenizer.step_end_id, BOS_ID, EOS_ID}) == 5


def test_digits_are_split(tokenizer):
    pieces = [tokenizer.sp.id_to_piece(i) for i in tokenizer.encode("1026*38")]
    assert pieces[:4] == ["1", "0", "2", "6"]


def test_unknown_characters_are_refused_not_changed(tokenizer):
    with pytest.raises(ValueError, match="does not know"):
        tokenizer.encode_checked("7+3²")


def test_tokenizer_loads_from_its_bytes(tokenizer, tmp_path):
    path = tmp_path / "copy.model"
    path.write_bytes(tokenizer.model_bytes)
    copy = Tokenizer.from_file(str(path))
    assert copy.sha256 == tokenizer.sha256
    assert copy.encode("arith: 7+38*2-15\n<think>\n") == tokenizer.encode("arith: 7+38*2-15\n<think>\n")
