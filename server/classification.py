"""Triton's classification extension: an output asked for with parameter ``classification: K``
is answered as the top K classes of each row, BYTES ``"<score>:<index>"`` or
``"<score>:<index>:<label>"``, best first (the score printed like C's ``%f``, as Triton
does, so tritonclient's examples parse it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bnserve.server.errors import InvalidInputError


def top_k(scores: np.ndarray, k: int, labels: Sequence[str], *, batched: bool,
          output: str) -> np.ndarray:
    """(rows, min(k, classes)) BYTES of the best classes of each row of ``scores``.

    ``batched``: the first axis is the batch (the class axis is the second); otherwise
    ``scores`` is one row of classes.
    """
    if scores.dtype.kind not in "fiu":
        raise InvalidInputError(f"output {output!r} is {scores.dtype.name}: classification needs "
                                "numeric scores")
    rows = scores if batched else scores[None]
    if rows.ndim != 2:
        raise InvalidInputError(
            f"output {output!r} has shape {list(scores.shape)}: classification needs one axis "
            f"of classes{' after the batch axis' if batched else ''}")
    k = min(k, rows.shape[1])
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]  # ties: the lower index first
    answer = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for j, index in enumerate(order[r]):
            text = f"{float(rows[r, index]):f}:{int(index)}"
            if int(index) < len(labels):
                text += f":{labels[index]}"
            answer[r, j] = text.encode("utf-8")
    return answer if batched else answer[0]
