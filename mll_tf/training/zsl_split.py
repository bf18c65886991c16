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
        holdout: list of SEEN label names held out as pseudo-unseen for model
            selection (``--selection zsl_holdout``, :func:`choose_holdout_labels`):
            masked (-1) in the training labels, scored with their word vectors
            on the validation split; empty otherwise. At test time they are
            still seen labels of the split.
    """
    seen: list
    unseen: list
    excluded: dict
    rule: str
    holdout: list = dataclasses.field(default_factory=list)

    def trained(self):
        """Seen labels the model is trained on: ``seen`` minus ``holdout`` (seen order)."""
        held = set(self.holdout)
        return [n for n in self.seen if n not in held]

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
        from mll_tf.data import fs

        return cls(**json.loads(fs.read_text(path)))


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


def choose_holdout_labels(seen, vocabulary, train_counts, val_counts, *, fraction=0.15,
                          min_val_images=5):
    """Seen labels held out as pseudo-unseen for zero-shot model selection.

    Model selection must not look at the unseen labels, so transfer is
    measured on a part of the SEEN labels instead: these are masked from the
    training loss and scored by their word vectors on the validation split,
    as unseen labels are at test time (the "validation classes" of Xian et
    al., "Zero-shot learning -- the good, the bad and the ugly", TPAMI 2018,
    Sec. 4.2, kept inside the one training run). The same rule as
    :func:`choose_unseen_labels`, on the seen labels and the validation split:
    a candidate has at least ``min_val_images`` positive validation images and
    no singular/plural twin anywhere in ``vocabulary`` (a twin would be
    trained under another spelling); candidates are ordered by decreasing
    train count (ties by name) and every k-th is taken starting with the
    second, so that ``round(fraction * len(seen))`` labels spread over the
    frequency range. Only seen-label counts are read.

    Args:
        seen: list of str, the seen labels (their order is kept).
        vocabulary: iterable of str, every label name of the dataset (for twins).
        train_counts, val_counts: dict name -> positive images in that split.
        fraction: float in (0, 1), share of the seen labels held out.
        min_val_images: int >= 1.

    Returns:
        list of str, a subset of ``seen`` in ``seen`` order (deterministic:
        the same inputs give the same list).

    Raises:
        ValueError: ``fraction`` outside (0, 1), or no seen label qualifies.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    forms = {}
    for n in vocabulary:
        forms.setdefault(_singular(n), set()).add(n)
    candidates = [n for n in seen
                  if val_counts.get(n, 0) >= min_val_images and len(forms.get(_singular(n), {n}) | {n}) == 1]
    if not candidates:
        raise ValueError(f"no seen label qualifies as pseudo-unseen (need >= {min_val_images} positive "
                         "validation images and no singular/plural twin)")
    candidates.sort(key=lambda n: (-train_counts.get(n, 0), n))
    n_hold = max(1, min(len(candidates), round(fraction * len(seen))))
    step = max(1, len(candidates) // n_hold)
    chosen = candidates[1::step][:n_hold] if len(candidates) > 1 else candidates
    chosen = set(chosen)
    if len(chosen) >= len(seen):
        raise ValueError("the holdout would leave no seen label to train on")
    return [n for n in seen if n in chosen]
