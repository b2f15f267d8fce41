"""Linear evaluation of frozen features with scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    C: float = 1.0,
    max_iter: int = 2000,
) -> float:
    """Test top-1 accuracy of StandardScaler + multinomial LogisticRegression fit on train."""
    train_x = np.asarray(train_x, dtype=np.float64).reshape(len(train_x), -1)
    test_x = np.asarray(test_x, dtype=np.float64).reshape(len(test_x), -1)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(train_x, np.asarray(train_y))
    return float(probe.score(test_x, np.asarray(test_y)))
