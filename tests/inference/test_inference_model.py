import numpy as np
import pytest

from actors.inference.knobs import FULL, KnobSetting, KnobSpace, LayerApprox, compile_setting
from actors.inference.model import Linear, quantization_step, quantize
from actors.inference.profile import wilson_interval


def test_quantize_error_within_half_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 30)).astype(np.float32)
    for bits in (2, 4, 8):
        codes, scale = quantize(w, bits)
        assert codes.dtype == np.int8
        err = np.abs(codes * scale - w)
        assert np.all(err <= quantization_step(w, bits) / 2 + 1e-6)


def test_linear_full_rank_matches_dense_and_quant_is_close():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((50, 300)).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32)
    x = rng.standard_normal((7, 50)).astype(np.float32)
    ref = np.maximum(x @ w + b, 0)
    np.testing.assert_allclose(
        Linear(w, b, rank=None, bits=32, relu=True)(x.copy()), ref, rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(
        Linear(w, b, rank=50, bits=32, relu=True)(x.copy()), ref, rtol=1e-4, atol=1e-3
    )
    q8 = Linear(w, b, rank=None, bits=8, relu=True)(x.copy())
    assert np.abs(q8 - ref).max() < 0.1 * np.abs(ref).max()


def test_approximations_really_shrink_weights_and_work(weights):
    net = weights[False]
    full = compile_setting(net, KnobSetting(3, (FULL,) * 3))
    low = compile_setting(net, KnobSetting(3, (FULL, LayerApprox(16, 32), LayerApprox(16, 32))))
    quant = compile_setting(net, KnobSetting(3, (LayerApprox(None, 4),) * 3))
    early = compile_setting(net, KnobSetting(1, (FULL,)))
    assert low.weight_bytes < full.weight_bytes and low.macs_per_sample < full.macs_per_sample
    assert quant.weight_bytes < full.weight_bytes / 3  # int8 codes instead of float32
    assert early.macs_per_sample < full.macs_per_sample / 2
    assert early.memory_bytes(128) < full.memory_bytes(128)


def test_knob_space_ids_unique_and_exit_checked():
    settings = KnobSpace().settings()
    assert len({s.id for s in settings}) == len(settings) > 100
    with pytest.raises(ValueError):
        KnobSetting(2, (FULL,))


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_interval(800, 800)
    assert hi == 1.0 and 0.99 < lo < 1.0


def test_packed_codes_roundtrip_and_shrink():
    from actors.inference.model import QuantMatmul

    rng = np.random.default_rng(2)
    w = rng.standard_normal((37, 300)).astype(np.float32)  # odd row count: padding path
    x = rng.standard_normal((5, 37)).astype(np.float32)
    for bits, per_byte in ((2, 4), (4, 2), (8, 1)):
        q = QuantMatmul(w, bits)
        codes, scale = quantize(w, bits)
        np.testing.assert_allclose(q.dequantized(), codes * scale, rtol=1e-6)
        np.testing.assert_allclose(q(x), x @ (codes * scale), rtol=1e-4, atol=1e-4)
        assert q.packed.nbytes == -(-37 // per_byte) * 300
