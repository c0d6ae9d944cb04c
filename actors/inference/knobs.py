"""The knob space: per-layer approximation, exit point and noise-aware weights.

A ``KnobSetting`` names everything that changes how a request is computed:
- ``exit``: how many hidden layers run before the classifier head (Delen's early exits);
- ``layers``: per hidden layer up to the exit, a low-rank factorisation (``rank``)
  and/or reduced-precision weights (``bits``) (BlinkNet's per-layer approximation);
- ``noise_aware``: serve the weights trained with the approximate multiplier's
  error injected in the forward pass (AxTrain) instead of the standard ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from actors.inference.model import ApproxNet, Linear, MLPWeights


@dataclass(frozen=True, order=True)
class LayerApprox:
    rank: int | None = None  # None: full rank
    bits: int = 32  # 32: float32; 2..8: int8 codes at that many bits

    @property
    def tag(self) -> str:
        return f"{'f' if self.rank is None else f'r{self.rank}'}b{self.bits}"

    @property
    def exact(self) -> bool:
        return self.rank is None and self.bits >= 32


FULL = LayerApprox()


@dataclass(frozen=True, order=True)
class KnobSetting:
    exit: int
    layers: tuple[LayerApprox, ...]
    noise_aware: bool = False

    def __post_init__(self) -> None:
        if self.exit < 1 or len(self.layers) != self.exit:
            raise ValueError(f"exit {self.exit} needs one LayerApprox per hidden layer run")

    @property
    def id(self) -> str:
        """Stable name, e.g. ``e3-fb32.r128b4.fb32-na``."""
        return f"e{self.exit}-{'.'.join(a.tag for a in self.layers)}-{'na' if self.noise_aware else 'std'}"

    def is_full(self, n_exits: int) -> bool:
        return self.exit == n_exits and all(a.exact for a in self.layers) and not self.noise_aware


def full_setting(n_exits: int) -> KnobSetting:
    return KnobSetting(exit=n_exits, layers=(FULL,) * n_exits)


def compile_setting(weights: MLPWeights, setting: KnobSetting) -> ApproxNet:
    """Build the network that serves ``setting``: only the layers it runs, in their approximate form.

    Heads stay exact: they are 10 columns wide, so approximating them saves nothing measurable.
    """
    if setting.exit > weights.n_exits:
        raise ValueError(f"exit {setting.exit} beyond the network's {weights.n_exits} exits")
    layers = [
        Linear(
            w,
            b,
            rank=a.rank,
            bits=a.bits,
            relu=True,
            svd=weights.svd(i) if a.rank is not None and a.rank < min(w.shape) else None,
        )
        for i, ((w, b), a) in enumerate(
            zip(weights.hidden[: setting.exit], setting.layers, strict=True)
        )
    ]
    hw, hb = weights.heads[setting.exit - 1]
    layers.append(Linear(hw, hb, rank=None, bits=32, relu=False))
    return ApproxNet(layers)


@dataclass(frozen=True)
class KnobSpace:
    """Options per hidden layer: the first (narrow-input) layer gets precision options only."""

    n_exits: int = 3
    first_layer: tuple[LayerApprox, ...] = (FULL, LayerApprox(None, 4), LayerApprox(None, 2))
    wide_layer: tuple[LayerApprox, ...] = (
        FULL,
        LayerApprox(None, 4),
        LayerApprox(None, 2),
        LayerApprox(128, 32),
        LayerApprox(128, 4),
        LayerApprox(32, 32),
        LayerApprox(32, 4),
    )
    noise_aware: tuple[bool, ...] = (False, True)

    def settings(self) -> list[KnobSetting]:
        out: list[KnobSetting] = []
        for exit_, na in itertools.product(range(1, self.n_exits + 1), self.noise_aware):
            per_layer = [self.first_layer] + [self.wide_layer] * (exit_ - 1)
            for combo in itertools.product(*per_layer):
                out.append(KnobSetting(exit=exit_, layers=tuple(combo), noise_aware=na))
        return out
