"""Tests for mll_tf.training.priors (CSL ComputePrior; docs/partial_labels.md §1, §8)."""

import numpy as np
import pytest

from mll_tf.training.priors import (
    PriorEstimator,
    load_prior_csv,
    save_prior_csv,
)

CLASSES = ["person", "traffic light", "cat", "dog, small"]


def test_estimator_running_mean_over_all_images():
    est = PriorEstimator(3)
    # logits 0 -> 0.5, ln 3 -> 0.75, -ln 3 -> 0.25
    ln3 = np.log(3.0)
    est.update(np.array([[0.0, ln3, -ln3],
                         [ln3, ln3, -ln3]], np.float32))
    est.update(np.array([[-ln3, 0.0, 0.0]], np.float32))
    # per class over the 3 images (not the mean of the batch means):
    # c0: (.5 + .75 + .25) / 3 = .5; c1: (.75 + .75 + .5) / 3 = 2/3;
    # c2: (.25 + .25 + .5) / 3 = 1/3
    np.testing.assert_allclose(est.result(), [0.5, 2 / 3, 1 / 3], rtol=1e-6)
    assert est.count == 3
    assert est.result().dtype == np.float32
    est.update(np.array([[1.0, 0.0, 0.5]]), from_logits=False)
    np.testing.assert_allclose(est.result(), [0.625, 0.5, 0.375], rtol=1e-6)
    est.reset()
    assert est.count == 0
    with pytest.raises(ValueError, match="no batch"):
        est.result()


def test_estimator_stable_for_extreme_logits_and_errors():
    est = PriorEstimator(2)
    est.update(np.array([[1000.0, -1000.0]]))
    np.testing.assert_array_equal(est.result(), [1.0, 0.0])
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        est.update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        est.update(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="from_logits"):
        est.update(np.array([[0.5, 1.5]]), from_logits=False)
    with pytest.raises(ValueError, match="num_classes"):
        PriorEstimator(0)


def test_save_format_matches_reference(tmp_path):
    path = tmp_path / "sub" / "prior.csv"
    save_prior_csv(path, CLASSES, [0.542279, 0.1, 1.0, 0.0])
    assert path.read_text() == ("Classes,avg_pred\n"
                                "person,0.542279\n"
                                "traffic light,0.1\n"
                                "cat,1.0\n"
                                '"dog, small",0.0\n')


def test_round_trip_by_name_with_shuffled_rows(tmp_path):
    prior = np.array([0.542279, 0.10733409, 0.08701196, 0.13645047],
                     np.float32)
    path = tmp_path / "prior.csv"
    save_prior_csv(path, CLASSES, prior)
    np.testing.assert_array_equal(load_prior_csv(path, CLASSES), prior)
    # A file written in another row order is matched by name.
    shuffled = tmp_path / "shuffled.csv"
    order = [2, 0, 3, 1]
    save_prior_csv(shuffled, [CLASSES[i] for i in order], prior[order])
    got = load_prior_csv(shuffled, CLASSES)
    np.testing.assert_array_equal(got, prior)
    assert got.dtype == np.float32
    # ... and a model with another class order gets its own order.
    np.testing.assert_array_equal(
        load_prior_csv(path, [CLASSES[i] for i in order]), prior[order])
    # From a PriorEstimator
    est = PriorEstimator(4)
    est.update(np.zeros((2, 4)))
    est.save(tmp_path / "est.csv", CLASSES)
    np.testing.assert_array_equal(load_prior_csv(tmp_path / "est.csv", CLASSES),
                                  [0.5] * 4)


def _write(tmp_path, text, name="p.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_load_accepts_bom_and_blank_lines(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufeffClasses,avg_pred\ncat,0.25\n\ndog,0.75\n\n"
                  .encode("utf-8"))
    np.testing.assert_array_equal(load_prior_csv(p, ["dog", "cat"]),
                                  [0.75, 0.25])


def test_load_missing_class(tmp_path):
    p = _write(tmp_path, "Classes,avg_pred\ncat,0.25\n")
    with pytest.raises(ValueError) as err:
        load_prior_csv(p, ["cat", "dog", "bird"])
    msg = str(err.value)
    assert str(p) in msg and "missing classes ['dog', 'bird']" in msg


def test_load_extra_class(tmp_path):
    p = _write(tmp_path, "Classes,avg_pred\ncat,0.25\ndog,0.5\nzebra,0.1\n")
    with pytest.raises(ValueError, match=r"p\.csv.*unknown classes.*'zebra'"):
        load_prior_csv(p, ["cat", "dog"])


def test_load_duplicate_class(tmp_path):
    p = _write(tmp_path, "Classes,avg_pred\ncat,0.25\ndog,0.5\ncat,0.3\n")
    with pytest.raises(ValueError, match=r"p\.csv.*duplicate classes \['cat'\]"):
        load_prior_csv(p, ["cat", "dog"])


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "high", ""])
def test_load_bad_value(tmp_path, value):
    p = _write(tmp_path, f"Classes,avg_pred\ncat,0.25\ndog,{value}\n")
    with pytest.raises(ValueError, match=r"p\.csv.*not numbers in \[0, 1\]: "
                                         r"'dog'="):
        load_prior_csv(p, ["cat", "dog"])


def test_load_bad_header_and_rows(tmp_path):
    p = _write(tmp_path, "class,prior\ncat,0.25\n")
    with pytest.raises(ValueError, match="header"):
        load_prior_csv(p, ["cat"])
    empty = _write(tmp_path, "", "empty.csv")
    with pytest.raises(ValueError, match="empty file"):
        load_prior_csv(empty, ["cat"])
    # the reference's committed prior ends with a stray one-field row
    stray = _write(tmp_path, "Classes,avg_pred\ncat,0.25\n1542867\n", "s.csv")
    with pytest.raises(ValueError, match=r"s\.csv.*line 3 has 1 field"):
        load_prior_csv(stray, ["cat"])
    with pytest.raises(ValueError, match="duplicate class names"):
        load_prior_csv(p, ["cat", "cat"])


def test_save_errors(tmp_path):
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        save_prior_csv(tmp_path / "a.csv", ["a", "b"], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*'b'"):
        save_prior_csv(tmp_path / "a.csv", ["a", "b"], [0.1, 1.2])
    with pytest.raises(ValueError, match="duplicate"):
        save_prior_csv(tmp_path / "a.csv", ["a", "a"], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-empty strings"):
        save_prior_csv(tmp_path / "a.csv", ["a", ""], [0.1, 0.2])
