"""The reference tutorial's Keras CNN, for `classify_defaults.py`: trained on exactly recogen's split.

Run with a Python that has TensorFlow/Keras (not a recogen dependency), e.g.
    python3.11 -m venv /tmp/kerasvenv && /tmp/kerasvenv/bin/pip install tensorflow-cpu numpy
    /tmp/kerasvenv/bin/python benchmarks/keras_reference.py --npz split.npz [--seed 0]

Data, one of:
* ``--npz FILE`` (what `classify_defaults.py` passes): arrays ``x_train, y_train, x_val, y_val, x_test,
  y_test``; images uint8 (N, H, W) or (N, H, W, C), labels integers 0..K-1. The file is written by the
  benchmark from recogen's own split (``recogen.data.create_dataset``), so both train on the same images.
* no ``--npz``: sklearn's digits with recogen's stratified seeded split re-implemented here (the old
  path; needs scikit-learn in this Python too).

Model, as the tutorial: Conv32-Pool-Conv64-Pool-Conv128-Pool (3x3, same padding, ReLU) - Flatten -
Dense128 - softmax; Adam (Keras defaults), sparse categorical cross-entropy, batch 32, 10 epochs,
validation on the val split every epoch. Prints one JSON line: test accuracy and ``wall_s``, the time
since this interpreter started (imports, data loading, training and evaluation included).
"""
import argparse
import json
import time

T0 = time.perf_counter()  # before any heavy import: wall_s covers the whole process but the interpreter's own start-up

import numpy as np  # noqa: E402


def digits_split(image_size: int, seed: int = 0, val=0.15, test=0.15):
    """The same split as recogen.data.base.stratified_split for the digits data set."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("the digits path needs scikit-learn in this Python (pip install scikit-learn), "
                         "or pass --npz FILE") from None
    import tensorflow as tf

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    x = tf.image.resize(x, (image_size, image_size), antialias=True).numpy().astype(np.float32) / 255.0
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    parts = [[], [], []]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        nv, nt = int(round(val * len(idx))), int(round(test * len(idx)))
        parts[1].append(idx[:nv]); parts[2].append(idx[nv:nv + nt]); parts[0].append(idx[nv + nt:])
    tr, va, te = (np.sort(np.concatenate(p)) for p in parts)
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


def npz_split(path: str):
    """The three splits of an npz written by classify_defaults.py: float32 (N, H, W, C) in [0, 1], int64 labels."""
    with np.load(path) as z:
        missing = {"x_train", "y_train", "x_val", "y_val", "x_test", "y_test"} - set(z.files)
        if missing:
            raise SystemExit(f"{path} lacks {', '.join(sorted(missing))}")
        out = []
        for s in ("train", "val", "test"):
            x, y = z[f"x_{s}"], z[f"y_{s}"].astype(np.int64)
            if x.dtype != np.uint8 or x.ndim not in (3, 4):
                raise SystemExit(f"{path}: x_{s} must be uint8 (N,H,W) or (N,H,W,C), got {x.dtype} {x.shape}")
            if x.ndim == 3:
                x = x[..., None]
            out.append((x.astype(np.float32) / 255.0, y))
    return tuple(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npz", help="the split to train on (x_train, y_train, x_val, y_val, x_test, y_test)")
    ap.add_argument("--image-size", type=int, default=28, help="digits path only")
    ap.add_argument("--seed", type=int, default=0, help="Keras' random seed (and the digits path's split seed)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    import keras
    from keras import layers

    if a.npz:
        (xtr, ytr), (xva, yva), (xte, yte) = npz_split(a.npz)
    else:
        (xtr, ytr), (xva, yva), (xte, yte) = digits_split(a.image_size, a.seed)
    num_classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
    keras.utils.set_random_seed(a.seed)
    model = keras.Sequential([
        keras.Input(xtr.shape[1:]),
        layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(128, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(num_classes, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=a.epochs, batch_size=a.batch_size, validation_data=(xva, yva), verbose=0)
    acc = float(model.evaluate(xte, yte, verbose=0)[1])
    print(json.dumps({"tool": f"keras {keras.__version__}", "data": a.npz or f"digits@{a.image_size}px",
                      "test_accuracy": round(acc, 4), "wall_s": round(time.perf_counter() - T0, 2),
                      "train_images": len(ytr), "val_images": len(yva), "test_images": len(yte),
                      "epochs": a.epochs, "batch_size": a.batch_size, "seed": a.seed}))


if __name__ == "__main__":
    main()
