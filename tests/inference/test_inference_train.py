import numpy as np

from actors.inference.knobs import FULL, KnobSetting, LayerApprox
from actors.inference.profile import measure_accuracy
from actors.inference.train import TrainConfig, load_or_train, train


def test_small_network_learns_digits_on_800_held_out(weights, split):
    assert len(split.y_test) >= 800
    acc = measure_accuracy(weights[False], KnobSetting(3, (FULL,) * 3), split).mean()
    assert acc > 0.9
    # every exit head is trained (joint loss), so early exits classify too
    assert measure_accuracy(weights[False], KnobSetting(1, (FULL,)), split).mean() > 0.85
    # 2-bit weights everywhere lose accuracy against float32
    q2 = measure_accuracy(weights[False], KnobSetting(3, (LayerApprox(None, 2),) * 3), split).mean()
    assert q2 < acc


def test_training_is_deterministic_and_cached(tmp_path, monkeypatch, split):
    monkeypatch.setenv("CLUSTER_MGR_CACHE", str(tmp_path))
    cfg = TrainConfig(widths=(16, 16), exit_weights=(0.5, 1.0), epochs=1, seed=3)
    a = train(cfg, split)
    b = load_or_train(cfg, split)
    assert list((tmp_path / "inference").glob("mlp-*.npz"))
    c = load_or_train(cfg, split)
    for x, y, z in zip(
        a.to_arrays().values(), b.to_arrays().values(), c.to_arrays().values(), strict=True
    ):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(y, z)


def test_noise_aware_config_changes_weights(split):
    base = TrainConfig(widths=(16, 16), exit_weights=(0.5, 1.0), epochs=1, seed=3)
    na = TrainConfig(widths=(16, 16), exit_weights=(0.5, 1.0), epochs=1, seed=3, noise_aware=True)
    assert base.key(split) != na.key(split)
    assert not np.array_equal(train(base, split).hidden[1][0], train(na, split).hidden[1][0])
