"""The peer side of ``benchmarks/bpr_vs_cornac.py``: train Cornac's BPR or VBPR on a given split.

Runs inside the benchmark's own environment (numpy + cornac [+ torch for VBPR]; never the project's):
``python _cornac_peer.py IN.npz OUT.npz '{"model": "bpr", ...}'``. Reads ``train_user``,
``train_item``, ``n_users``, ``n_items`` (and ``features`` for VBPR) from IN, trains with one
thread, and writes the learned factors in the caller's user/item index order to OUT; prints
``{"fit_cpu_s": ...}`` as JSON on the last line.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time

import numpy as np


def main() -> int:
    src, dst, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    import cornac
    from cornac.data import Dataset, ImageModality

    data = np.load(src)
    n_users, n_items = int(data["n_users"]), int(data["n_items"])
    triples = [(str(u), str(i), 1.0) for u, i in zip(data["train_user"].tolist(), data["train_item"].tolist(),
                                                      strict=True)]
    ds = Dataset.from_uir(triples, seed=params["seed"])
    users = np.array([int(x) for x in ds.uid_map], dtype=np.int64)  # cornac index -> ours
    items = np.array([int(x) for x in ds.iid_map], dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    if params["model"] == "bpr":
        model = cornac.models.BPR(k=params["k"], max_iter=params["epochs"], learning_rate=params["lr"],
                                  lambda_reg=params["reg"], seed=params["seed"], verbose=False)
        t0 = time.process_time()
        model.fit(ds)
        fit_cpu = time.process_time() - t0
        out["P"] = _place(model.u_factors, users, n_users)
        out["Q"] = _place(model.i_factors, items, n_items)
        out["b"] = _place(model.i_biases, items, n_items)
    else:
        import torch

        torch.set_num_threads(1)
        ds.add_modalities(item_image=ImageModality(features=data["features"][items].astype(np.float32)))
        model = cornac.models.VBPR(k=params["k"], k2=params["k"], n_epochs=params["epochs"],
                                   batch_size=params["batch_size"], learning_rate=params["lr"],
                                   lambda_w=params["reg"], lambda_b=params["reg"], lambda_e=0.0,
                                   use_gpu=False, verbose=False, seed=params["seed"])
        t0 = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):  # cornac prints "Optimization finished!"
            model.fit(ds)
        fit_cpu = time.process_time() - t0
        out["P"] = _place(model.gamma_user, users, n_users)
        out["theta"] = _place(model.theta_user, users, n_users)
        out["Q"] = _place(model.gamma_item, items, n_items)
        out["b"] = _place(model.beta_item, items, n_items)
        out["E"] = model.emb_matrix.astype(np.float32)
        out["beta"] = model.beta_prime.ravel().astype(np.float32)
    np.savez(dst, **out)
    print(json.dumps({"fit_cpu_s": fit_cpu}))
    return 0


def _place(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """Rows of ``values`` (cornac order) moved to our indices; rows cornac never saw stay 0."""
    out = np.zeros((n,) + values.shape[1:], dtype=np.float32)
    out[index] = values
    return out


if __name__ == "__main__":
    raise SystemExit(main())
