"""Seen / unseen label splits for multi-label zero-shot learning.

LESA trains classifiers for SEEN labels only and scores UNSEEN labels by
swapping their word vectors in (docs/lesa.md §2). On a dataset without an
official split (the clip-art tags), :func:`choose_unseen_labels` picks the
unseen labels deterministically.
"""

import dataclasses
import json


@dataclasses.dataclass
class LabelSplit:
    """A zero-shot label split over a dataset's vocabulary.

    Attributes:
        seen: list of label names used for training, in vocabulary order.
        unseen: list of label names held out, in vocabulary order.
        excluded: dict label name -> reason (e.g. no word vector): these take
            part in neither set.
        rule: str, how the split was made.
    """
    seen: list
    unseen: list
    excluded: dict
    rule: str

    def indices(self, label_names):
        """Column indices of (seen, unseen) in ``label_names`` (int lists)."""
        pos = {n: i for i, n in enumerate(label_names)}
        missing = [n for n in self.seen + self.unseen if n not in pos]
        if missing:
            raise ValueError(f"label split names {missing[:5]} are not in the dataset's labels")
        return [pos[n] for n in self.seen], [pos[n] for n in self.unseen]

    def gzsl_names(self):
        """GZSL column order: unseen first, then seen (docs/metrics.md §5)."""
        return self.unseen + self.seen

    def save(self, path):
        """Write the split as JSON, atomically."""
        from mll_tf.training.atomic import write_json

        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(**json.load(f))


def _singular(name):
    return name[:-1] if name.endswith("s") and not name.endswith("ss") else name


def choose_unseen_labels(label_names, missing_vectors, train_counts, test_counts, *,
                         unseen_fraction=0.25, min_test_images=10, min_train_images=1):
    """Choose unseen labels deterministically.

    Rule: a label is *excluded* if it has no word vector. A label is a
    candidate for *unseen* if it has at least ``min_test_images`` positive
    test images and no other vocabulary label with the same singular form
    (``icon``/``icons``; otherwise the "unseen" label would be seen under
    another spelling). Candidates are ordered by decreasing train count
    (ties by name) and every k-th is taken, starting with the second, so that
    about ``unseen_fraction`` of the usable vocabulary is unseen across the
    whole frequency range. Everything else with a vector and at least
    ``min_train_images`` train positives is *seen*.

    Args:
        label_names: list of C str (vocabulary order).
        missing_vectors: iterable of label names without a word vector.
        train_counts, test_counts: dict name -> positive images per split.
        unseen_fraction: float in (0, 1).
        min_test_images, min_train_images: int >= 0.

    Returns:
        :class:`LabelSplit`.

    Raises:
        ValueError: if no label qualifies as unseen or ``unseen_fraction`` is
            outside (0, 1).
    """
    if not 0 < unseen_fraction < 1:
        raise ValueError(f"unseen_fraction must be in (0, 1), got {unseen_fraction}")
    missing = set(missing_vectors)
    excluded = {n: "no word vector" for n in label_names if n in missing}
    usable = [n for n in label_names if n not in missing]
    forms = {}
    for n in usable:
        forms.setdefault(_singular(n), []).append(n)
    candidates = [n for n in usable
                  if test_counts.get(n, 0) >= min_test_images and len(forms[_singular(n)]) == 1]
    candidates.sort(key=lambda n: (-train_counts.get(n, 0), n))
    n_unseen = max(1, round(unseen_fraction * len(usable)))
    if not candidates:
        raise ValueError("no label qualifies as unseen (need a word vector and "
                         f">= {min_test_images} positive test images)")
    step = max(1, len(candidates) // n_unseen)
    unseen = set(candidates[1::step][:n_unseen])
    seen = []
    for n in usable:
        if n in unseen:
            continue
        if train_counts.get(n, 0) < min_train_images:
            excluded[n] = f"fewer than {min_train_images} positive train images"
            continue
        seen.append(n)
    rule = (f"unseen: every {step}-th of {len(candidates)} candidates (word vector, >= {min_test_images} "
            f"positive test images, no singular/plural twin) by train frequency; fraction {unseen_fraction}")
    return LabelSplit(seen=seen, unseen=[n for n in label_names if n in unseen],
                      excluded=excluded, rule=rule)
