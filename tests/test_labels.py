import numpy as np
import pytest

from mll_tf.labels import from_pm1, to_pm1, validate


def test_pm1_round_trip():
    pm1 = np.array([[1, -1, 0], [0, 1, -1]], np.float32)
    ours = from_pm1(pm1)
    np.testing.assert_array_equal(ours, [[1, 0, -1], [-1, 1, 0]])
    assert ours.dtype == np.int8
    np.testing.assert_array_equal(to_pm1(ours), pm1)


@pytest.mark.parametrize("fn,bad", [(from_pm1, [2, 0]), (from_pm1, [0.5]), (to_pm1, [1, -2])])
def test_converters_reject_other_values(fn, bad):
    with pytest.raises(ValueError, match="expected values"):
        fn(np.array(bad))


def test_validate_names_the_array():
    with pytest.raises(ValueError, match="my_labels"):
        validate([1, 3], name="my_labels")
