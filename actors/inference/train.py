"""Training in numpy: Adam on the joint early-exit loss, optionally noise-aware (AxTrain).

Noise-aware training injects, in every forward pass, the error that the
approximate multiplier makes on the weight operand: a ``noise_bits``-bit
operand rounds each weight to the nearest level of its column, an error
distributed U(-step/2, step/2) with step = max|w_col| / (2^(bits-1) - 1).
A fresh draw per minibatch; gradients pass straight through to the clean
weights (the weights that are stored are the clean ones).

Weights are cached under the user cache dir keyed by a hash of the config
and the training data, so training happens once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from actors.inference.data import Split, load_split
from actors.inference.model import MLPWeights, init_weights, quantization_step

CACHE_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    widths: tuple[int, ...] = (1024, 1024, 1024)
    epochs: int = 30
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: Weight of each exit's loss (BranchyNet / Delen joint training); last = final head.
    exit_weights: tuple[float, ...] = (0.3, 0.3, 1.0)
    noise_aware: bool = False
    noise_bits: int = 4
    seed: int = 0
    data_seed: int = 0

    def key(self, split: Split) -> str:
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        h.update(f"v{CACHE_VERSION}".encode())
        for a in (split.x_train, split.y_train):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:20]


def cache_dir() -> Path:
    """$CLUSTER_MGR_CACHE/inference, else $XDG_CACHE_HOME (or ~/.cache)/cluster-mgr/inference."""
    own = os.environ.get("CLUSTER_MGR_CACHE")
    if own:
        return Path(own) / "inference"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cluster-mgr" / "inference"


def _softmax_xent(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
    p[np.arange(n), y] -= 1.0
    return loss, p / n


def _perturb(w: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    step = quantization_step(w, bits)
    return w + (rng.random(w.shape, dtype=np.float32) - 0.5) * step


class _Adam:
    def __init__(self, params: list[np.ndarray], lr: float, wd: float) -> None:
        self.params, self.lr, self.wd, self.t = params, lr, wd, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            if p.ndim == 2:
                g = g + self.wd * p  # decoupled-from-bias L2 on matrices only
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + 1e-8)


def train(config: TrainConfig, split: Split | None = None) -> MLPWeights:
    """Train from scratch (deterministic for a config); see ``load_or_train`` for the cached path."""
    split = split or load_split(config.data_seed)
    if len(config.exit_weights) != len(config.widths):
        raise ValueError("one exit weight per hidden layer")
    rng = np.random.default_rng(config.seed)
    net = init_weights(split.n_features, config.widths, 10, config.seed)
    params = [a for layer in net.hidden + net.heads for a in layer]
    opt = _Adam(params, config.lr, config.weight_decay)
    n, n_layers = len(split.y_train), len(net.hidden)
    for _ in range(config.epochs):
        order = rng.permutation(n)
        for s in range(0, n, config.batch):
            idx = order[s : s + config.batch]
            x, y = split.x_train[idx], split.y_train[idx]
            hid = [(w, b) for w, b in net.hidden]
            heads = [(w, b) for w, b in net.heads]
            if config.noise_aware:
                hid = [(_perturb(w, config.noise_bits, rng), b) for w, b in hid]
            # forward: keep inputs of every hidden layer for the backward pass
            acts = [x]
            for w, b in hid:
                acts.append(np.maximum(acts[-1] @ w + b, 0.0))
            g_hid = [np.zeros_like(w) for w, _ in hid], [np.zeros_like(b) for _, b in hid]
            g_head: list[tuple[np.ndarray, np.ndarray]] = []
            d_h = [np.zeros_like(a) for a in acts[1:]]
            for i, (hw, hb) in enumerate(heads):
                _, d_logit = _softmax_xent(acts[i + 1] @ hw + hb, y)
                d_logit *= config.exit_weights[i]
                g_head.append((acts[i + 1].T @ d_logit, d_logit.sum(axis=0)))
                d_h[i] += d_logit @ hw.T
            for i in range(n_layers - 1, -1, -1):
                d_pre = d_h[i] * (acts[i + 1] > 0)
                g_hid[0][i] = acts[i].T @ d_pre
                g_hid[1][i] = d_pre.sum(axis=0)
                if i > 0:
                    d_h[i - 1] += d_pre @ hid[i][0].T
            grads = [g for i in range(n_layers) for g in (g_hid[0][i], g_hid[1][i])]
            grads += [g for gw, gb in g_head for g in (gw, gb)]
            opt.step([g.astype(np.float32) for g in grads])
    return net


def load_or_train(config: TrainConfig, split: Split | None = None) -> MLPWeights:
    """Cached weights for ``config`` (trained and saved on first use)."""
    split = split or load_split(config.data_seed)
    path = cache_dir() / f"mlp-{config.key(split)}.npz"
    if path.exists():
        with np.load(path) as f:
            return MLPWeights.from_arrays({k: f[k] for k in f.files})
    net = train(config, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **net.to_arrays())
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return net
