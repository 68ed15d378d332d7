"""The reference tutorial's Keras CNN on the same digits data, for `classify_defaults.py`.

Run with a Python that has TensorFlow/Keras (not a recogen dependency), e.g.
    python -m venv /tmp/kerasvenv && /tmp/kerasvenv/bin/pip install tensorflow-cpu scikit-learn
    /tmp/kerasvenv/bin/python benchmarks/keras_reference.py --image-size 28
It reproduces recogen's digits split (same stratified, seeded rule) without importing recogen, and
prints one JSON line: test accuracy and the time since the interpreter started.
"""
import argparse
import json
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402


def digits_split(image_size: int, seed: int = 0, val=0.15, test=0.15):
    """The same split as recogen.data.base.stratified_split for the digits data set."""
    from sklearn.datasets import load_digits
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    import keras
    from keras import layers

    (xtr, ytr), (xva, yva), (xte, yte) = digits_split(a.image_size)
    keras.utils.set_random_seed(0)
    s = a.image_size
    model = keras.Sequential([
        keras.Input((s, s, 1)),
        layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(128, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=a.epochs, batch_size=a.batch_size, validation_data=(xva, yva), verbose=0)
    acc = float(model.evaluate(xte, yte, verbose=0)[1])
    print(json.dumps({"tool": f"keras {keras.__version__}", "test_accuracy": round(acc, 4),
                      "wall_s": round(time.perf_counter() - T0, 2), "train_images": len(ytr), "epochs": a.epochs}))


if __name__ == "__main__":
    main()
