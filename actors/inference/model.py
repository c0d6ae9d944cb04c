"""An MLP with early-exit heads, and its approximate (knob-dependent) inference form.

Training works on ``MLPWeights`` (dense float32 matrices). Serving compiles the
weights for one knob setting into an ``ApproxNet`` whose layers really are
smaller: a low-rank layer stores and multiplies two thin factors, a
reduced-precision layer stores int8 codes (with one float scale per output
column) and dequantises them a column block at a time, and an early exit
stops after an intermediate layer. Memory is counted from the arrays the
compiled network actually holds and the buffers a request actually needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Output columns dequantised at once: bounds the float32 workspace of an int8 layer.
DEQUANT_CHUNK = 128
F32 = 4  # bytes


@dataclass
class MLPWeights:
    """Hidden layers (W of shape (in, out), b) and one classifier head per exit.

    ``heads[i]`` reads the output of ``hidden[i]``; the last head is the full network's.
    """

    hidden: list[tuple[np.ndarray, np.ndarray]]
    heads: list[tuple[np.ndarray, np.ndarray]]
    _svd: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def svd(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SVD of a hidden layer's matrix, computed once: every rank knob truncates the same one."""
        if layer not in self._svd:
            w = self.hidden[layer][0].astype(np.float64)
            self._svd[layer] = np.linalg.svd(w, full_matrices=False)
        return self._svd[layer]

    @property
    def n_exits(self) -> int:
        return len(self.heads)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for kind, layers in (("hidden", self.hidden), ("head", self.heads)):
            for i, (w, b) in enumerate(layers):
                out[f"{kind}{i}_w"], out[f"{kind}{i}_b"] = w, b
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> MLPWeights:
        def take(kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
            n = sum(1 for k in arrays if k.startswith(kind) and k.endswith("_w"))
            return [(arrays[f"{kind}{i}_w"], arrays[f"{kind}{i}_b"]) for i in range(n)]

        return cls(hidden=take("hidden"), heads=take("head"))


def init_weights(n_in: int, widths: tuple[int, ...], n_classes: int, seed: int) -> MLPWeights:
    """He-initialised hidden layers (ReLU) and Glorot-scaled heads."""
    rng = np.random.default_rng(seed)
    hidden, heads = [], []
    fan_in = n_in
    for w in widths:
        hidden.append(
            (
                (rng.standard_normal((fan_in, w)) * np.sqrt(2.0 / fan_in)).astype(np.float32),
                np.zeros(w, np.float32),
            )
        )
        heads.append(
            (
                (rng.standard_normal((w, n_classes)) * np.sqrt(1.0 / w)).astype(np.float32),
                np.zeros(n_classes, np.float32),
            )
        )
        fan_in = w
    return MLPWeights(hidden, heads)


# --------------------------------------------------------------------------- quantisation


def quantize(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-column quantisation to ``bits`` (2..8): int8 codes and scales."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8], got {bits}")
    levels = 2 ** (bits - 1) - 1
    scale = np.abs(w).max(axis=0) / levels
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.rint(w / scale), -levels, levels).astype(np.int8)
    return codes, scale


def quantization_step(w: np.ndarray, bits: int) -> np.ndarray:
    """Per-column step of the ``bits`` quantiser: the error of one weight operand is U(-s/2, s/2)."""
    return (np.abs(w).max(axis=0) / (2 ** (bits - 1) - 1)).astype(np.float32)


# --------------------------------------------------------------------------- approximate layers


class Matmul:
    """y = x @ W in float32 (full precision)."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = np.ascontiguousarray(w, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.w.shape  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return self.w.nbytes

    @property
    def workspace_bytes(self) -> int:
        return 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w


class QuantMatmul:
    """y = x @ (codes * scale) with ``bits``-bit codes packed 8 // bits to a byte.

    Codes are packed along the input axis, so a block of output columns unpacks
    on its own. The scale is per output column, so (x @ codes) * scale is exact
    and the only float32 copy ever alive is one unpacked block (``workspace_bytes``).
    """

    def __init__(self, w: np.ndarray, bits: int) -> None:
        self.bits = bits
        codes, self.scale = quantize(w, bits)
        self.n_in, self.n_out = codes.shape
        self.per_byte = 8 // bits
        self.offset = 2 ** (bits - 1) - 1  # codes + offset are in [0, 2^bits - 2]
        rows = -(-self.n_in // self.per_byte) * self.per_byte
        u = np.zeros((rows, self.n_out), np.uint8)
        u[: self.n_in] = (codes.astype(np.int16) + self.offset).astype(np.uint8)
        packed = np.zeros((rows // self.per_byte, self.n_out), np.uint8)
        for k in range(self.per_byte):
            packed |= u[k :: self.per_byte] << np.uint8(k * bits)
        self.packed = packed

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_in, self.n_out

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scale.nbytes

    @property
    def workspace_bytes(self) -> int:
        rows = self.packed.shape[0] * self.per_byte
        return rows * min(DEQUANT_CHUNK, self.n_out) * F32

    def _unpack(self, j: int) -> np.ndarray:
        blk = self.packed[:, j : j + DEQUANT_CHUNK]
        out = np.empty((blk.shape[0] * self.per_byte, blk.shape[1]), np.float32)
        mask = np.uint8(2**self.bits - 1)
        for k in range(self.per_byte):
            out[k :: self.per_byte] = (blk >> np.uint8(k * self.bits)) & mask
        out -= self.offset
        return out[: self.n_in]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.empty((x.shape[0], self.n_out), np.float32)
        for j in range(0, self.n_out, DEQUANT_CHUNK):
            sl = slice(j, j + DEQUANT_CHUNK)
            np.multiply(x @ self._unpack(j), self.scale[sl], out=y[:, sl])
        return y

    def dequantized(self) -> np.ndarray:
        """The effective weight matrix (for tests and error analysis)."""
        return (
            np.concatenate([self._unpack(j) for j in range(0, self.n_out, DEQUANT_CHUNK)], axis=1)
            * self.scale
        )


def make_matmul(w: np.ndarray, bits: int) -> Matmul | QuantMatmul:
    return Matmul(w) if bits >= 32 else QuantMatmul(w, bits)


class Linear:
    """A (possibly low-rank, possibly reduced-precision) affine layer, optional ReLU."""

    def __init__(
        self,
        w: np.ndarray,
        b: np.ndarray,
        *,
        rank: int | None,
        bits: int,
        relu: bool,
        svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.relu = relu
        self.b = np.ascontiguousarray(b, dtype=np.float32)
        self.factors: list[Matmul | QuantMatmul]
        if rank is not None and rank < min(w.shape):
            # Truncated SVD: the best rank-r approximation in Frobenius norm (Eckart-Young).
            u, s, vt = svd if svd is not None else np.linalg.svd(w.astype(np.float64), False)
            a = (u[:, :rank] * s[:rank]).astype(np.float32)
            self.factors = [make_matmul(a, bits), make_matmul(vt[:rank].astype(np.float32), bits)]
        else:
            self.factors = [make_matmul(w, bits)]

    @property
    def n_in(self) -> int:
        return self.factors[0].shape[0]

    @property
    def n_out(self) -> int:
        return self.factors[-1].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.factors) + self.b.nbytes

    @property
    def macs_per_sample(self) -> int:
        return sum(f.shape[0] * f.shape[1] for f in self.factors)

    def activation_bytes(self, batch: int) -> int:
        """Peak bytes alive while this layer runs: input, output, factor intermediate, workspace."""
        inner = sum(f.shape[1] for f in self.factors[:-1])
        ws = max(f.workspace_bytes for f in self.factors)
        return batch * (self.n_in + self.n_out + inner) * F32 + ws

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for f in self.factors:
            x = f(x)
        x += self.b
        if self.relu:
            np.maximum(x, 0.0, out=x)
        return x


class ApproxNet:
    """The compiled network of one knob setting: hidden layers up to the exit, then its head."""

    def __init__(self, layers: list[Linear]) -> None:
        self.layers = layers

    def logits(self, x: np.ndarray) -> np.ndarray:
        h = np.ascontiguousarray(x, dtype=np.float32)
        for layer in self.layers:
            h = layer(h)
        return h

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(axis=1)

    @property
    def weight_bytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def activation_bytes(self, batch: int) -> int:
        return max(layer.activation_bytes(batch) for layer in self.layers)

    def memory_bytes(self, batch: int) -> int:
        """Weights actually held plus the peak working set of one request of ``batch`` samples."""
        return self.weight_bytes + self.activation_bytes(batch)

    @property
    def macs_per_sample(self) -> int:
        return sum(layer.macs_per_sample for layer in self.layers)
