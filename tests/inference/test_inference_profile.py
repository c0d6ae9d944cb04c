import numpy as np

from actors.inference.data import request_batches
from actors.inference.knobs import FULL, KnobSetting, LayerApprox
from actors.inference.profile import profile_settings
from actors.inference.service import InferenceService

SETTINGS = [
    KnobSetting(3, (FULL,) * 3),
    KnobSetting(3, (LayerApprox(None, 4),) * 3, noise_aware=True),
    KnobSetting(1, (LayerApprox(None, 2),)),
]


def test_profile_measures_every_setting(weights, split):
    profs = profile_settings(weights, SETTINGS, split, batch=32, reps=4)
    assert [p.setting for p in profs] == SETTINGS
    for p in profs:
        assert p.total == len(split.y_test) >= 800
        assert len(p.latency_ms) == 4 and min(p.latency_ms) > 0
        lo, hi = p.accuracy_ci
        assert lo <= p.accuracy <= hi
        assert p.memory_bytes(2) == p.weight_bytes + 2 * p.activation_bytes
    full, quant, early = profs
    assert full.weight_bytes > quant.weight_bytes > early.weight_bytes
    assert full.macs_per_sample > early.macs_per_sample


def test_service_switches_knob_and_reports(weights, split):
    svc = InferenceService(weights, SETTINGS[0])
    reqs = request_batches(split.x_test, 16, 3)
    for r in reqs:
        pred, ms = svc.serve(r)
        assert pred.shape == (16,) and ms > 0
    w0 = svc.window(16)
    svc.set_knob(SETTINGS[2])
    svc.serve(split.x_test[:16], split.y_test[:16])
    w1 = svc.window(16)
    assert w0.requests == 3 and w1.requests == 1 and w1.labelled == 16
    assert w1.knob == SETTINGS[2].id and w1.memory_bytes < w0.memory_bytes
    assert np.isfinite(w0.p99_ms)
