"""Classification metrics agree with sklearn computed directly."""
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, top_k_accuracy_score

from recogen.metrics.classification import classification_metrics, confusion_text


def test_metrics_match_sklearn():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(200, 8, generator=g).softmax(1)
    y = torch.randint(0, 8, (200,), generator=g)
    classes = [f"c{i}" for i in range(8)]
    m = classification_metrics(probs, y, classes)
    pred = probs.argmax(1).numpy()
    assert abs(m["accuracy"] - accuracy_score(y.numpy(), pred)) < 1e-6
    assert abs(m["top5_accuracy"] - top_k_accuracy_score(y.numpy(), probs.numpy(), k=5, labels=range(8))) < 1e-6
    assert abs(m["macro_f1"] - f1_score(y.numpy(), pred, average="macro")) < 1e-6
    assert m["confusion_matrix"] == confusion_matrix(y.numpy(), pred, labels=range(8)).tolist()
    assert m["per_class"]["c3"]["support"] == int((y == 3).sum())
    assert "c7" in confusion_text(m["confusion_matrix"], classes)


def test_top5_is_omitted_for_five_classes_or_fewer():
    m = classification_metrics(torch.eye(3)[[0, 1, 2, 1]], torch.tensor([0, 1, 2, 2]), ["a", "b", "c"])
    assert m["top5_accuracy"] is None and m["accuracy"] == 0.75
