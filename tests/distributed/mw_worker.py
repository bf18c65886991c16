"""One worker of a multi-worker test job: ``python -m tests.distributed.mw_worker '<json>'``.

The JSON holds ``tf_config`` (the cluster, this task), ``features_root``, ``run_dir`` and ``epochs``; the
worker trains the ``ignore`` method on the toy store with ``fit_task(resume=True)`` and prints ``DONE``.
"""

import json
import os
import sys


def main(arg):
    spec = json.loads(arg)
    os.environ["TF_CONFIG"] = json.dumps(spec["tf_config"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mll_tf.training.runner import fit_task
    from tests.distributed.test_multi_worker import make_task

    task = make_task(spec["features_root"], spec["run_dir"], spec["epochs"])
    metrics = fit_task(task, resume=True, verbose=0)
    print("DONE", json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
