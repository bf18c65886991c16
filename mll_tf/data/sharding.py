"""Sharded extraction: N independent workers each write a deterministic 1/N of a split, then one merge.

Worker ``i`` of ``N`` extracts the images whose id hashes to ``i``
(:func:`worker_of`: SHA-1 of the UTF-8 id, first 8 bytes big-endian, modulo
``N``; independent of the records' order, the process and the machine) into
its own directory ``<split_dir>/part-0000i-of-0000N/``. That directory is an
ordinary feature-store split (:class:`mll_tf.data.feature_store.FeatureStoreWriter`:
its own shards, ``.ids.txt`` sidecars, partial ``manifest.json`` and
``writer.lock``), so a worker may be killed at any point and re-run: it
resumes as a single extraction does. No worker talks to another; the only
shared thing is the file system.

:func:`finalize_split` then merges the N partial manifests into the split's
``manifest.json`` (shards listed by their path relative to the split,
``part-00000-of-00002/train-00000.tfrecord``; nothing is copied or renamed,
which matters on object stores where a rename is a copy) after checking
that every worker finished, that every part was made by the same extraction
(:data:`mll_tf.data.feature_store.IDENTITY_FIELDS`) and that every image of
the split was written or skipped exactly once. The merged store is read by
:func:`mll_tf.data.feature_store.make_dataset` and checked by
:func:`mll_tf.data.feature_store.verify_store` like any other.

The cluster may be given explicitly (``num_workers``, ``worker_index``) or by
the standard ``TF_CONFIG`` environment variable (:func:`cluster_from_tf_config`,
read with TensorFlow's ``TFConfigClusterResolver``).
"""

import dataclasses
import hashlib
import re

__all__ = ["ShardingError", "worker_of", "records_of_worker", "part_dir", "part_dirs",
           "cluster_from_tf_config", "finalize_split"]

_PART_RE = re.compile(r"^part-(?P<index>\d{5})-of-(?P<count>\d{5})$")
#: How many offending image ids an error message names.
_NAMED = 5


class ShardingError(ValueError):
    """A sharded extraction cannot be finalized (or was asked for with an invalid cluster).

    The message names the split, the worker(s) and, for ids written twice or
    never, up to five of them with their count.
    """


def worker_of(image_id, num_workers):
    """The worker (int in ``[0, num_workers)``) that extracts ``image_id``.

    Args:
        image_id: str, the image id.
        num_workers: int >= 1.

    Returns:
        ``int.from_bytes(sha1(image_id.encode("utf-8"))[:8], "big") % num_workers``.
    """
    digest = hashlib.sha1(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % int(num_workers)


def _check_cluster(num_workers, worker_index):
    if int(num_workers) < 1:
        raise ShardingError(f"--num-workers must be >= 1, got {num_workers}")
    if not 0 <= int(worker_index) < int(num_workers):
        raise ShardingError(f"--worker-index must be in [0, {num_workers}), got {worker_index}")


def records_of_worker(records, num_workers, worker_index):
    """The records worker ``worker_index`` of ``num_workers`` extracts, in their given order.

    Args:
        records: list of objects with ``image_id`` (e.g.
            :class:`mll_tf.data.adapter.ImageRecord`).
        num_workers: int >= 1.
        worker_index: int in ``[0, num_workers)``.

    Returns:
        list, the records ``r`` with ``worker_of(r.image_id, num_workers) == worker_index``.

    Raises:
        ShardingError: for an invalid ``num_workers`` / ``worker_index``.
    """
    _check_cluster(num_workers, worker_index)
    return [r for r in records if worker_of(r.image_id, num_workers) == worker_index]


def part_dir(split_dir, worker_index, num_workers):
    """``<split_dir>/part-<index:05d>-of-<count:05d>``: worker ``worker_index``'s own store."""
    from mll_tf.data import fs

    return fs.join(split_dir, f"part-{int(worker_index):05d}-of-{int(num_workers):05d}")


def part_dirs(split_dir):
    """The ``part-*-of-*`` sub-directories of a split: list of ``(index, count, name)``, sorted."""
    from mll_tf.data import fs

    out = []
    if not fs.isdir(split_dir):
        return out
    for name in fs.listdir(split_dir):
        m = _PART_RE.match(name.rstrip("/"))
        if m and fs.isdir(fs.join(split_dir, m.group(0))):
            out.append((int(m.group("index")), int(m.group("count")), m.group(0)))
    return sorted(out)


def cluster_from_tf_config():
    """``(num_workers, worker_index)`` from the ``TF_CONFIG`` environment variable, or None if unset.

    Every ``chief`` and ``worker`` task of the cluster is one extraction
    worker: the chief (if any) is index 0 and ``worker`` ``i`` is ``i + 1``
    (``i`` without a chief); ``ps``/``evaluator`` tasks take no part.

    Raises:
        ShardingError: if ``TF_CONFIG`` names a task that is neither a chief
            nor a worker, or is not valid.
    """
    import json
    import os

    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    import tensorflow as tf

    try:
        json.loads(raw)
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        cluster = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    except (ValueError, TypeError, KeyError) as e:
        raise ShardingError(f"TF_CONFIG is not valid: {e}") from None
    chiefs = len(cluster.get("chief", []))
    workers = len(cluster.get("worker", []))
    if task_type == "chief":
        index = task_id
    elif task_type == "worker":
        index = chiefs + task_id
    else:
        raise ShardingError(f"TF_CONFIG names task {task_type!r} {task_id}: only 'chief' and 'worker' "
                            f"tasks extract features")
    _check_cluster(chiefs + workers, index)
    return chiefs + workers, index


def _ids_of(manifest, directory):
    """(stored ids with their part, skipped ids) of one part's manifest."""
    from mll_tf.data import fs
    from mll_tf.data.feature_store import _ids_path, _read_ids

    stored = []
    for shard in manifest.shards:
        path = _ids_path(fs.join(directory, shard["file"]))
        if not fs.isfile(path):
            raise ShardingError(f"{path} (the ids of a shard listed in {directory}/manifest.json) is "
                                f"missing; re-run that worker's extraction command")
        stored += _read_ids(path)
    return stored, [s["image_id"] for s in manifest.skipped]


def _named(ids):
    ids = sorted(ids)
    more = f" and {len(ids) - _NAMED} more" if len(ids) > _NAMED else ""
    return ", ".join(repr(i) for i in ids[:_NAMED]) + more


def finalize_split(split_dir, image_ids, num_workers, records_sha256=None):
    """Merge the partial manifests of a sharded extraction into ``<split_dir>/manifest.json``.

    Checks, before writing anything: there are ``num_workers`` part
    directories, each with a complete manifest (the worker finished), no part
    of another worker count; the parts agree on every identity field
    (:data:`mll_tf.data.feature_store.IDENTITY_FIELDS`) and their
    ``records_sha256`` is ``records_sha256`` (the same dataset, ids and
    labels); and every id of ``image_ids`` is stored or skipped exactly once
    across the parts, and no other id is.

    The merged manifest lists the parts' shards (``file`` relative to
    ``split_dir``, in part order) and skipped images, ``complete=True``. It is
    written atomically while holding the split's writer lock; finalizing
    again gives the same manifest (up to its ``updated`` time).

    Args:
        split_dir: str, the split directory (any ``tf.io.gfile`` path).
        image_ids: iterable of str, every image the workers were given (the
            split's records after any ``--limit``, and the images the dataset
            adapter skipped).
        num_workers: int >= 1, how many workers extracted it.
        records_sha256: str or None, the split's identity digest the
            workers recorded (:func:`~mll_tf.data.feature_store.records_digest`
            of *all* the split's records, also when ``--limit`` extracted
            fewer); None: not compared.

    Returns:
        The merged :class:`mll_tf.data.feature_store.Manifest`.

    Raises:
        ShardingError: (a ValueError) naming the split and what is wrong: the
            missing or unfinished workers, the parts of another worker count,
            a part made by another extraction, or up to five ids written more
            than once (with the workers holding them), never written, or not
            in the split.
    """
    from mll_tf.data import fs
    from mll_tf.data.feature_store import (MANIFEST_NAME, Manifest, StoreMismatchError, acquire_lock,
                                           check_identity, release_lock)

    n = int(num_workers)
    _check_cluster(n, 0)
    parts = part_dirs(split_dir)
    other = sorted({name for _, count, name in parts if count != n})
    if other:
        raise ShardingError(f"{split_dir} holds parts of another number of workers ({', '.join(other)}); "
                            f"finalize with that --num-workers, or delete them")
    missing, unfinished, manifests = [], [], []
    for i in range(n):
        d = part_dir(split_dir, i, n)
        if not fs.isfile(fs.join(d, MANIFEST_NAME)):
            missing.append(i)
            continue
        m = Manifest.load(d)
        manifests.append((i, d, m))
        if not m.complete:
            unfinished.append(i)
    if missing or unfinished:
        what = []
        if missing:
            what.append(f"worker(s) {', '.join(map(str, missing))} of {n} wrote nothing")
        if unfinished:
            what.append(f"worker(s) {', '.join(map(str, unfinished))} of {n} did not finish "
                        f"(their manifests are incomplete)")
        raise ShardingError(f"cannot finalize {split_dir}: {'; '.join(what)}; run (or re-run: it resumes) "
                            f"the extraction command of each with --num-workers {n} --worker-index <i>")
    base = manifests[0][2]
    want = dataclasses.replace(base, records_sha256=records_sha256)
    for i, d, m in manifests:
        try:
            check_identity(d, m, want, advice="Re-extract that worker's part with --overwrite.")
        except StoreMismatchError as e:
            raise ShardingError(f"cannot finalize {split_dir}: worker {i}'s part {e}") from None
    seen, where = {}, {}
    dup = set()
    shards, skipped = [], []
    for i, d, m in manifests:
        stored, skipped_ids = _ids_of(m, d)
        for image_id in stored + skipped_ids:
            if image_id in seen:
                dup.add(image_id)
                where.setdefault(image_id, [seen[image_id]]).append(i)
            else:
                seen[image_id] = i
        rel = d.rstrip("/").rsplit("/", 1)[-1]
        shards += [dict(s, file=f"{rel}/{s['file']}") for s in m.shards]
        skipped += m.skipped
    expected = set(image_ids)
    never = expected - set(seen)
    foreign = set(seen) - expected
    problems = []
    if dup:
        ex = sorted(dup)[0]
        problems.append(f"{len(dup)} image(s) written more than once: {_named(dup)} (e.g. {ex!r} by workers "
                        f"{', '.join(map(str, where[ex]))})")
    if never:
        problems.append(f"{len(never)} image(s) never written: {_named(never)}")
    if foreign:
        problems.append(f"{len(foreign)} image(s) not in the split: {_named(foreign)}")
    if problems:
        raise ShardingError(f"cannot finalize {split_dir}: {'; '.join(problems)}")
    merged = dataclasses.replace(base, shards=shards, skipped=skipped,
                                 num_examples=sum(int(s["num_examples"]) for s in shards), complete=True,
                                 created="", updated="")
    merged.extra = dict(merged.extra, sharded_extraction={"num_workers": n})
    if fs.isfile(fs.join(split_dir, MANIFEST_NAME)):
        old = Manifest.load(split_dir)
        top = [s["file"] for s in old.shards if "/" not in s["file"]]
        if top:
            raise ShardingError(f"{split_dir} already holds a store written by one process (e.g. {top[0]}); "
                                f"finalizing would hide it: delete it or extract elsewhere")
        merged.created = old.created
    token = acquire_lock(split_dir)
    try:
        merged.save(split_dir)
    finally:
        release_lock(split_dir, token)
    return merged

