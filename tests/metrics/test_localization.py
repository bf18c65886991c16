"""Keypoint localisation accuracy on hand-placed keypoints and boxes."""

import numpy as np
import pytest

from mll_tf.metrics.localization import keypoint_hits, localization_accuracy


def test_hits_by_hand():
    # 4x4 map: cell (r, c) -> centre ((r + .5) / 4, (c + .5) / 4)
    points = np.array([[[0, 0], [3, 3], [0, 0]], [[1, 2], [0, 0], [2, 0]]], np.float64)
    valid = np.array([[True, True, False], [True, False, True]])
    labels = np.array([[1, 1, 1], [1, 0, 1]])
    boxes = [[[0, 0.0, 0.0, 0.25, 0.25],      # class 0 box holds (0.125, 0.125): hit
              [1, 0.0, 0.0, 0.5, 0.5],        # class 1's keypoint (0.875, 0.875) is outside: miss
              [2, 0.0, 0.0, 1.0, 1.0]],       # class 2 present, no keypoint: miss
             [[0, 0.2, 0.5, 0.4, 0.75],       # (0.375, 0.625): y in [0.2, 0.4), x in [0.5, 0.75): hit
              [2, 0.5, 0.0, 0.625, 0.125]]]   # (0.625, 0.125): y == y1 (half-open): miss
    hits, pairs = keypoint_hits(points, valid, labels, boxes, (4, 4))
    assert pairs.sum() == 5
    assert hits.tolist() == [[True, False, False], [True, False, False]]
    assert localization_accuracy(points, valid, labels, boxes, (4, 4)) == pytest.approx(2 / 5)


def test_box_of_another_class_is_a_miss_and_empty_is_nan():
    pts = np.array([[[0.0, 0.0], [0.0, 0.0]]])
    labels = np.array([[1, 0]])
    assert localization_accuracy(pts, np.ones((1, 2), bool), labels, [[[1, 0, 0, 1, 1]]], (2, 2)) == 0.0
    assert np.isnan(localization_accuracy(pts, np.ones((1, 2), bool), np.zeros((1, 2)), [[]], (2, 2)))
    with pytest.raises(ValueError, match="box lists"):
        keypoint_hits(pts, np.ones((1, 2), bool), labels, [], (2, 2))
