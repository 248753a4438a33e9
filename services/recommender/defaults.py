"""Every recommender's hyper-parameter presets, as plain data (torch-free: the planner's work
estimates read the epochs without loading a model). Each model class reads its entry as ``DEFAULTS``;
``None`` fields of a :class:`~services.recommender.config.RecConfig` are filled from
``MODEL_DEFAULTS[model][preset]``, then from ``config.COMMON_DEFAULTS``.

``fast`` is the demo-sized default; ``study`` the study's settings (docs/study-protocol.md).
"""

from __future__ import annotations

from typing import Any

_VBPR_FAST = {"k": 64, "epochs": 60, "batch_size": 256, "optimizer": "adagrad", "lr": [0.05, 0.05, 0.01],
              "regs": [1e-3, 1e-3, 0.0], "drop_last": False}
_VBPR_STUDY = {"k": 64, "epochs": 4000, "batch_size": 512, "optimizer": "adagrad", "lr": [0.01, 1e-4, 1e-3],
               "regs": [0.1, 0.001, 0.0], "drop_last": True, "reg_form": "study_sum", "patience": 0}

MODEL_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "bprmf": {
        "fast": {"k": 64, "epochs": 60, "batch_size": 256, "optimizer": "adagrad", "lr": [0.05],
                 "regs": [1e-3, 1e-3], "drop_last": False},
        "study": {"k": 64, "epochs": 4000, "batch_size": 512, "optimizer": "adagrad", "lr": [0.01],
                  "regs": [0.1, 0.001], "drop_last": True},
    },
    "vbpr": {"fast": _VBPR_FAST, "study": _VBPR_STUDY},
    "amr": {"fast": _VBPR_FAST, "study": _VBPR_STUDY},  # AMR is VBPR with an adversarial second phase
    "deepstyle": {
        "fast": {"k": 64, "epochs": 60, "batch_size": 256, "optimizer": "adagrad", "lr": [0.05, 0.05, 0.01],
                 "regs": [1e-3, 1e-3, 0.0], "drop_last": False},
        "study": {"k": 64, "epochs": 4000, "batch_size": 512, "optimizer": "adagrad", "lr": [0.01, 1e-4, 1e-3],
                  "regs": [0.1, 0.001, 0.0], "drop_last": True},
    },
    "acf": {
        "fast": {"k": 64, "epochs": 40, "batch_size": 256, "optimizer": "adam", "lr": [2e-3], "regs": [1e-4],
                 "drop_last": False},
        "study": {"k": 64, "epochs": 100, "batch_size": 512, "optimizer": "adam", "lr": [1e-4], "regs": [1e-5],
                  "drop_last": True},
    },
    "dvbpr": {
        "fast": {"k": 64, "epochs": 20, "batch_size": 512, "optimizer": "adam", "lr": [3e-3],
                 "regs": [1e-3, 1e-4], "drop_last": False, "cnn_width": 16},
        "study": {"k": 64, "epochs": 20, "batch_size": 32, "optimizer": "adam", "lr": [1e-4],
                  "regs": [1.0, 0.001], "drop_last": True, "cnn_width": 32},
    },
}


def default_epochs(model: str, preset: str = "fast") -> int | None:
    """The epochs ``model`` trains for under ``preset`` when the config leaves them unset (None: unknown)."""
    epochs = MODEL_DEFAULTS.get(model, {}).get(preset, {}).get("epochs")
    return int(epochs) if epochs is not None else None
