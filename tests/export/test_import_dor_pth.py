"""deep-object-reid ``.pth.tar`` -> ``import_weights.py --source dor_pth``, checked against NumPy.

The checkpoints are written without torch (:mod:`tests.torch_pickle`) under
the original key names and layouts (timm ``tf_efficientnetv2_s`` wrapped by
``torchreid/models/timm_wrapper.py``; heads of ``timm_wrapper.py``,
``losses/am_softmax.py``, ``models/ml_decoder.py``, ``models/gcn.py``),
inside the dict of ``torchreid/engine/engine.py::save_model`` (``state_dict``,
``epoch``, an optimizer and a OneCycleLR scheduler pickled with their
globals, NumPy scalars). The reference is an independent NumPy forward pass
written from timm's EfficientNetV2 (TF "same" padding, BN eps 1e-3, SiLU,
SE from the block input x 0.25) and the originals' head ``forward``s, on
real photographs (scikit-image's ``chelsea`` and ``coffee``) at 64 x 64,
normalised as deep-object-reid does (x / 127.5 - 1).
"""

import json
import os

import numpy as np
import pytest

from tests import torch_pickle as tp
from tests.data.lesa_fixtures import make_json_tree

LABELS = ["bird", "cat", "dog", "person"]     # make_json_tree's classes (sorted, as DOR-ML)
C, D, SIZE = len(LABELS), 1280, 64
#: timm _gen_efficientnetv2_s arch_def: (block type, repeats, kernel, stride, expansion, out channels, se ratio)
V2_S = [("cn", 2, 3, 1, 1, 24, 0), ("er", 4, 3, 2, 4, 48, 0), ("er", 4, 3, 2, 4, 64, 0),
        ("ir", 6, 3, 2, 4, 128, 0.25), ("ir", 9, 3, 1, 6, 160, 0.25), ("ir", 15, 3, 2, 6, 256, 0.25)]
STEM = 24


# --- the checkpoint: random weights under timm's names ------------------------------------------------------

def _timm_backbone(rng, prefix):
    sd = {}

    def conv(name, o, i, k, gain=1.0):
        sd[name + ".weight"] = (rng.standard_normal((o, i, k, k)) * gain / np.sqrt(i * k * k)).astype(np.float32)

    def bn(name, c, small=False):
        sd[name + ".weight"] = rng.uniform(0.1, 0.3, c).astype(np.float32) if small else \
            rng.uniform(0.6, 1.2, c).astype(np.float32)
        sd[name + ".bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        sd[name + ".running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        sd[name + ".running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[name + ".num_batches_tracked"] = np.array(1234, np.int64)

    conv(prefix + "conv_stem", STEM, 3, 3)
    bn(prefix + "bn1", STEM)
    cin = STEM
    for s, (kind, reps, k, stride, e, cout, se) in enumerate(V2_S):
        for b in range(reps):
            p = f"{prefix}blocks.{s}.{b}."
            if kind == "cn":
                conv(p + "conv", cout, cin, k)
                bn(p + "bn1", cout, small=True)
            elif kind == "er":
                conv(p + "conv_exp", cin * e, cin, k)
                bn(p + "bn1", cin * e)
                conv(p + "conv_pwl", cout, cin * e, 1)
                bn(p + "bn2", cout, small=True)
            else:
                mid, rd = cin * e, int(cin * se)
                conv(p + "conv_pw", mid, cin, 1)
                bn(p + "bn1", mid)
                sd[p + "conv_dw.weight"] = rng.standard_normal((mid, 1, k, k), np.float32) / k
                bn(p + "bn2", mid)
                conv(p + "se.conv_reduce", rd, mid, 1)
                sd[p + "se.conv_reduce.bias"] = rng.normal(0, 0.1, rd).astype(np.float32)
                conv(p + "se.conv_expand", mid, rd, 1)
                sd[p + "se.conv_expand.bias"] = rng.normal(0, 0.1, mid).astype(np.float32)
                conv(p + "conv_pwl", cout, mid, 1)
                bn(p + "bn3", cout, small=True)
            cin = cout
    conv(prefix + "conv_head", D, cin, 1)
    bn(prefix + "bn2", D)
    return sd


def _head(rng, kind, cosine, prefix):
    """The head's tensors as deep-object-reid names and lays them out."""
    f32 = np.float32
    if kind == "linear_head":
        if cosine:
            return {"model.classifier.weight": rng.standard_normal((D, C), f32),      # AngleSimpleLinear [in, out]
                    "model.act2.weight": np.array([0.25], f32)}
        return {"model.classifier.weight": rng.standard_normal((C, D), f32) * 0.05,  # nn.Linear [out, in]
                "model.classifier.bias": rng.normal(0, 0.1, C).astype(f32)}
    if kind == "ml_gcn":
        word, a = 6, (rng.uniform(size=(C, C)) > 0.5) * 0.25 / 2 + np.eye(C)
        sd = {"gc1.weight": rng.uniform(-0.03, 0.03, (word, D)).astype(f32),
              "gc2.weight": rng.uniform(-0.03, 0.03, (D, D)).astype(f32),
              "inp": rng.standard_normal((C, word), f32), "A": a.astype(f32),
              # TimmModelsWrapper's own classifier: saved, unused by Image_GCNN.forward
              "backbone.model.classifier.weight": rng.standard_normal((C, D), f32),
              "backbone.model.classifier.bias": np.zeros(C, f32)}
        if cosine:
            sd.update({"head.weight": rng.standard_normal((D, C), f32), "backbone.model.act2.weight": np.array([0.25], f32)})
        else:
            sd.update({"head.weight": rng.standard_normal((C, D), f32) * 0.05, "head.bias": rng.normal(0, .1, C).astype(f32)})
        return sd
    e, ffn, q = 16, 32, C          # small decoder; 8 heads as the original
    g = -(-C // q)
    lp = "decoder.layers.0."
    sd = {"decoder.embed_standart.weight": rng.standard_normal((e, D), f32) * 0.05,
          "decoder.embed_standart.bias": rng.normal(0, 0.1, e).astype(f32),
          "decoder.query_embed.weight": rng.standard_normal((q, e), f32),
          "decoder.duplicate_pooling": rng.standard_normal((q, e, g), f32) * 0.3,
          "decoder.duplicate_pooling_bias": rng.normal(0, 0.1, C).astype(f32),
          lp + "multihead_attn.in_proj_weight": rng.standard_normal((3 * e, e), f32) * 0.3,
          lp + "multihead_attn.in_proj_bias": rng.normal(0, 0.1, 3 * e).astype(f32),
          lp + "multihead_attn.out_proj.weight": rng.standard_normal((e, e), f32) * 0.3,
          lp + "multihead_attn.out_proj.bias": rng.normal(0, 0.1, e).astype(f32),
          lp + "linear1.weight": rng.standard_normal((ffn, e), f32) * 0.3,
          lp + "linear1.bias": rng.normal(0, 0.1, ffn).astype(f32),
          lp + "linear2.weight": rng.standard_normal((e, ffn), f32) * 0.3,
          lp + "linear2.bias": rng.normal(0, 0.1, e).astype(f32)}
    for n in ("norm1", "norm2", "norm3"):
        sd[f"{lp}{n}.weight"] = rng.uniform(0.5, 1.5, e).astype(f32)
        sd[f"{lp}{n}.bias"] = rng.normal(0, 0.1, e).astype(f32)
    if cosine:
        sd["backbone.model.act2.weight"] = np.array([0.25], f32)
    return sd


def _checkpoint(sd, extra=None, module=False):
    """engine.py::save_model's dict: state_dict + epoch + optimizer + OneCycleLR scheduler + metadata."""
    if module:
        sd = {"module." + k: v for k, v in sd.items()}
    state, storages = tp.state_dict(sd)
    momentum, mstorages = tp.state_dict({"0": np.zeros(3, np.float32)}, first_key=len(storages))
    onecycle = tp.Call(tp.Global("torchreid.optim.lr_scheduler", "OneCycleLR"),
                       state={"total_steps": 100, "optimizer": tp.Call(tp.Global("torchreid.optim.sam", "SAM"),
                                                                       state={"rho": 0.05})})
    ckpt = {"state_dict": state, "epoch": 7,
            "optimizer": {"state": {0: {"momentum_buffer": momentum}}, "param_groups": [{"lr": 0.005}]},
            "scheduler": {"anneal_func": tp.Call(tp.Global("builtins", "getattr"), onecycle, "_annealing_cos"),
                          "base_lrs": [np.float64(0.005)]},
            "num_classes": np.int64(C), "classes_map": {n: i for i, n in enumerate(LABELS)},
            "initial_lr": np.float64(0.005), **(extra or {})}
    return ckpt, storages + mstorages


# --- the NumPy reference ---------------------------------------------------------------------------------------

def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _silu(x):
    return x * _sigmoid(x)


def _same_pad(x, k, s):
    """TF 'same' padding of [N, H, W, C] (timm Conv2dSame / pad_same): the odd pixel after."""
    h, w = x.shape[1:3]
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    return np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))), oh, ow


def _taps(x, k, s):
    """(i, j, the input window of tap (i, j)) for a k x k kernel at stride s, TF "same" padding."""
    xp, oh, ow = _same_pad(x, k, s)
    return ((i, j, xp[:, i:i + s * oh:s, j:j + s * ow:s, :]) for i in range(k) for j in range(k))


def _conv(x, w, s=1):
    """Per-tap convolution, w [O, I, k, k] (PyTorch layout)."""
    return sum(tap @ w[:, :, i, j].T for i, j, tap in _taps(x, w.shape[-1], s))


def _dwconv(x, w, s=1):
    """Per-tap depthwise convolution, w [C, 1, k, k] (PyTorch layout)."""
    return sum(tap * w[:, 0, i, j] for i, j, tap in _taps(x, w.shape[-1], s))


def _bn(x, sd, name, calibrate=None):
    if calibrate is not None:   # running statistics = these images' (+ a perturbation), written to the checkpoint
        rng = np.random.default_rng(len(name))
        mean = x.mean(axis=(0, 1, 2)) + rng.normal(0, 0.05, x.shape[-1]) * x.std(axis=(0, 1, 2))
        # 16x the variance and none tiny: BN outputs of std ~1/4 keep the random network well conditioned
        # (float32 round-off is not amplified through the 40 blocks) and image-dependent
        var = 16 * (x.var(axis=(0, 1, 2)) + 0.5 * x.var()) * rng.uniform(0.8, 1.25, x.shape[-1])
        for key, v in ((".running_mean", mean), (".running_var", var)):
            calibrate[name + key] = v.astype(np.float32)
            sd[name + key] = calibrate[name + key].astype(np.float64)
    return ((x - sd[name + ".running_mean"]) / np.sqrt(sd[name + ".running_var"] + 1e-3)
            * sd[name + ".weight"] + sd[name + ".bias"])


def numpy_efficientnetv2_s(images, sd, prefix, calibrate=False):
    """timm tf_efficientnetv2_s forward_features on RGB [0, 255] normalised with mean = std = 0.5.

    ``calibrate``: set every BN's running statistics in ``sd`` (in place) to those of its input on these
    images, slightly perturbed, so that random weights keep image-dependent features to the last layer
    (with arbitrary statistics the 40 blocks wash the image out and every photo gets the same features).
    """
    out = sd if calibrate else None
    sd = {k: v.astype(np.float64) for k, v in sd.items() if k.startswith(prefix)}

    def bn(x, sd, name):
        return _bn(x, sd, name, calibrate=out)
    x = (images.astype(np.float64) / 255 - 0.5) / 0.5
    x = _silu(bn(_conv(x, sd[prefix + "conv_stem.weight"], 2), sd, prefix + "bn1"))
    cin = STEM
    for s, (kind, reps, k, stride, e, cout, se) in enumerate(V2_S):
        for b in range(reps):
            p, st = f"{prefix}blocks.{s}.{b}.", stride if b == 0 else 1
            shortcut = x
            if kind == "cn":
                x = _silu(bn(_conv(x, sd[p + "conv.weight"], st), sd, p + "bn1"))
            elif kind == "er":
                x = _silu(bn(_conv(x, sd[p + "conv_exp.weight"], st), sd, p + "bn1"))
                x = bn(_conv(x, sd[p + "conv_pwl.weight"]), sd, p + "bn2")
            else:
                x = _silu(bn(_conv(x, sd[p + "conv_pw.weight"]), sd, p + "bn1"))
                x = _silu(bn(_dwconv(x, sd[p + "conv_dw.weight"], st), sd, p + "bn2"))
                z = x.mean(axis=(1, 2), keepdims=True)
                z = _silu(z @ sd[p + "se.conv_reduce.weight"][:, :, 0, 0].T + sd[p + "se.conv_reduce.bias"])
                x = x * _sigmoid(z @ sd[p + "se.conv_expand.weight"][:, :, 0, 0].T + sd[p + "se.conv_expand.bias"])
                x = bn(_conv(x, sd[p + "conv_pwl.weight"]), sd, p + "bn3")
            if st == 1 and cin == cout:
                x = x + shortcut
            cin = cout
    return _silu(bn(_conv(x, sd[prefix + "conv_head.weight"]), sd, prefix + "bn2"))   # [N, h, w, 1280]


def _normalize(x, axis):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def _layer_norm(x, sd, name):
    m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]


def numpy_head_probabilities(feat, sd, kind, cosine, scale):
    """The originals' head forward (timm_wrapper / AngleSimpleLinear / MLDecoder / Image_GCNN), then sigmoid."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    n = feat.shape[0]

    def classifier(pooled, w, b):
        if cosine:   # AngleSimpleLinear: normalize(x) . normalize(W, dim=0), clamped
            return np.clip(_normalize(pooled, 1) @ _normalize(w, 0), -1, 1) * scale
        return pooled @ w.T + b

    if kind == "linear_head":
        logits = classifier(feat.mean(axis=(1, 2)), sd["model.classifier.weight"], sd.get("model.classifier.bias"))
    elif kind == "ml_gcn":
        a = sd["A"]
        dm = np.diag(a.sum(1) ** -0.5)
        adj = (a @ dm).T @ dm                                              # Image_GCNN.gen_adj
        lrelu = lambda v: np.where(v > 0, v, 0.2 * v)                      # noqa: E731
        h = lrelu(adj @ (sd["inp"] @ sd["gc1.weight"]))
        h = lrelu(adj @ (h @ sd["gc2.weight"]))
        w = _sigmoid(h.max(0))
        logits = classifier((feat * w).mean(axis=(1, 2)), sd["head.weight"], sd.get("head.bias"))
    else:
        lp = "decoder.layers.0."
        tok = feat.reshape(n, -1, D) @ sd["decoder.embed_standart.weight"].T + sd["decoder.embed_standart.bias"]
        tok = np.where(tok > 0, tok, 0.2 * tok) if cosine else np.maximum(tok, 0)
        q = sd["decoder.query_embed.weight"]
        e = q.shape[1]
        t = _layer_norm(np.broadcast_to(q + q, (n,) + q.shape), sd, lp + "norm1")   # tgt + dropout1(tgt)
        wi, bi = sd[lp + "multihead_attn.in_proj_weight"], sd[lp + "multihead_attn.in_proj_bias"]
        qq, kk, vv = (x @ wi[i * e:(i + 1) * e].T + bi[i * e:(i + 1) * e] for i, x in enumerate((t, tok, tok)))
        heads, dk = 8, e // 8
        split = lambda x: x.reshape(n, -1, heads, dk).transpose(0, 2, 1, 3)         # noqa: E731
        att = split(qq) @ split(kk).transpose(0, 1, 3, 2) / np.sqrt(dk)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = (att @ split(vv)).transpose(0, 2, 1, 3).reshape(n, -1, e)
        o = o @ sd[lp + "multihead_attn.out_proj.weight"].T + sd[lp + "multihead_attn.out_proj.bias"]
        t = _layer_norm(t + o, sd, lp + "norm2")
        ff = np.maximum(t @ sd[lp + "linear1.weight"].T + sd[lp + "linear1.bias"], 0)
        t = _layer_norm(t + ff @ sd[lp + "linear2.weight"].T + sd[lp + "linear2.bias"], sd, lp + "norm3")
        pool = sd["decoder.duplicate_pooling"]                                       # [Q, E, G]
        if cosine:                                                                   # GroupASL
            t, pool = _normalize(t, 2), _normalize(pool, 1)
        z = np.einsum("nqe,qeg->nqg", t, pool).reshape(n, -1)[:, :C] + sd["decoder.duplicate_pooling_bias"]
        logits = z * scale if cosine else z
    return _sigmoid(logits)


# --- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos():
    from PIL import Image
    from skimage import data

    return np.stack([np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32)
                     for im in (data.chelsea(), data.coffee())])


@pytest.fixture(scope="module")
def backbone(photos):
    """Random timm weights (under ``model.`` and ``backbone.model.``) and their NumPy features on the photos."""
    sd = _timm_backbone(np.random.default_rng(0), "model.")
    numpy_efficientnetv2_s(photos, sd, "model.", calibrate=True)
    feat = numpy_efficientnetv2_s(photos, sd, "model.")
    pooled = feat.mean(axis=(1, 2))
    # the two photos' features differ (a wrong kernel layout, stride or padding would show in the comparison)
    assert np.abs(pooled[0] - pooled[1]).mean() > 0.1 * np.abs(pooled).mean()
    return sd, feat


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dor") / "json"
    make_json_tree(str(root))
    return root


def _args(dataset, run, method, loss, ckpt, *more):
    return ["--source", "dor_pth", "--method", method, "--finetune", "--backbone", "efficientnetv2_s",
            "--dataset", "json", "--data-root", str(dataset), "--input-size", str(SIZE), "--loss", loss,
            "--aam-scale", "17", "--run-dir", str(run), "--checkpoint", str(ckpt), *more,
            *(["--decoder-dim", "16", "--decoder-ffn", "32"] if method == "ml_decoder" else [])]


def _state(backbone, kind, cosine, seed):
    bsd, feat = backbone
    prefix = "model." if kind == "linear_head" else "backbone.model."
    sd = {prefix + k[len("model."):]: v for k, v in bsd.items()}
    sd.update(_head(np.random.default_rng(seed), kind, cosine, prefix))
    return sd, feat


# nn.Linear; AngleSimpleLinear (legacy format); ML-Decoder's GroupASL (am_binary) with a module. prefix;
# Image_GCNN with nn.Linear (~8 s each: EfficientNetV2-S is built, saved twice and loaded)
@pytest.mark.parametrize("kind, cosine, fmt", [("linear_head", False, "zip"), ("linear_head", True, "legacy"),
                                               ("ml_decoder", True, "zip"), ("ml_gcn", False, "zip")])
def test_imported_run_matches_numpy(backbone, photos, dataset, tmp_path, capsys, kind, cosine, fmt):
    """Backbone + head written as deep-object-reid saves them -> CLI -> saved run == NumPy forward to 1e-4."""
    import keras

    from evaluation import import_weights

    sd, feat = _state(backbone, kind, cosine, seed=len(kind) + int(cosine))
    ckpt, storages = _checkpoint(sd, module=(kind == "ml_decoder"))   # nn.DataParallel's prefix once
    path = tmp_path / "model.pth.tar-7"
    if fmt == "zip":
        tp.write_zip(path, ckpt, storages)
    else:
        path.write_bytes(tp.legacy_bytes(ckpt, storages))
    run = tmp_path / "run"
    assert import_weights.main(_args(dataset, run, kind, "aam" if cosine else "asl", path)) == 0, \
        capsys.readouterr().err
    report = json.load(open(run / "imported_weights.json"))
    assert report["preprocessing"]["scale"] == pytest.approx(1 / 127.5)
    assert set(report["checkpoint_entries"]["not_loaded"]) == {"optimizer", "scheduler"}
    assert report["checkpoint_entries"]["metadata"]["epoch"] == 7
    assert all(k.endswith("num_batches_tracked") or "act2" in k or ".classifier." in k for k in report["skipped"])
    assert len(report["imported"]) + len(report["skipped"]) == len(sd)
    for f in ("config.yaml", "best.keras", "last.keras"):
        assert (run / f).exists()
    import mll_tf.tasks  # noqa: F401  (registers the models)

    model = keras.models.load_model(run / "best.keras", compile=False)
    got = _sigmoid(np.asarray(model(photos, training=False), np.float64))
    want = numpy_head_probabilities(feat, sd, kind, cosine, 17.0)
    assert want.std() > 0.01        # the photos give distinct, non-saturated scores
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_refusals_are_named_and_write_nothing(backbone, dataset, tmp_path, capsys):
    """Missing, unknown and mis-shaped tensors, a wrong method / loss / class count, a malicious global."""
    from evaluation import import_weights

    sd, _ = _state(backbone, "linear_head", False, seed=5)
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "model.blocks.3.2.se.conv_reduce.weight"}, {},
                    "missing: model.blocks.3.2.se.conv_reduce.weight"),
        "extra": (dict(sd, **{"model.blocks.3.2.extra.weight": np.zeros(3, np.float32)}), {},
                  "unknown: model.blocks.3.2.extra.weight [3]"),
        "shape": (dict(sd, **{"model.blocks.1.0.conv_exp.weight": np.zeros((96, 24, 5, 5), np.float32)}), {},
                  "model.blocks.1.0.conv_exp.weight [96, 24, 5, 5] -> block2a_expand_conv.kernel [3, 3, 24, 96]"),
        "classes": ({**sd, "model.classifier.weight": np.zeros((5, D), np.float32),
                     "model.classifier.bias": np.zeros(5, np.float32)}, {},
                    "model.classifier.weight scores 5 classes, the run's dataset has 4"),
        "order": (sd, {"classes_map": {"cat": 0, "bird": 1, "dog": 2, "person": 3}},
                  "classes_map: class 0 of the checkpoint is 'cat', of the run's dataset 'bird'"),
        "evil": (sd, {"hook": tp.Call(tp.Global(os.system.__module__, "system"), f"touch {tmp_path}/pwned")},
                 f"'{os.system.__module__}.system'"),
    }
    for name, (state, extra, message) in cases.items():
        ckpt, storages = _checkpoint(state, extra)
        path = tp.write_zip(tmp_path / f"{name}.pth.tar", ckpt, storages)
        run = tmp_path / f"run_{name}"
        assert import_weights.main(_args(dataset, run, "linear_head", "asl", path)) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (name, err)
        assert not run.exists(), name
    assert not (tmp_path / "pwned").exists()
    # the checkpoint's head decides the method and the loss
    ckpt, storages = _checkpoint(sd)
    path = tp.write_zip(tmp_path / "ok.pth.tar", ckpt, storages)
    assert import_weights.main(_args(dataset, tmp_path / "r1", "ml_decoder", "asl", path)) == 2
    assert "deep-object-reid linear_head model (model.classifier.weight): import it with --method linear_head" \
        in capsys.readouterr().err
    assert import_weights.main(_args(dataset, tmp_path / "r2", "linear_head", "aam", path)) == 2
    assert "model.classifier has a bias (nn.Linear, loss asl): pass --loss asl" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
