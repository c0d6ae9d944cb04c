"""One factory serves both backends: every configurable name builds a controller."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_local import signals

from cluster_mgr.local.knobs import Knobs
from cluster_mgr.local.planner import RoundPlan
from cluster_mgr.local.profile import ServiceProfile
from cluster_mgr.local.registry import make_controller
from cluster_mgr.settings import LOCAL_CONTROLLERS


@pytest.mark.parametrize("name", LOCAL_CONTROLLERS)
def test_every_configurable_name_builds_a_working_controller(
    name: str, profile: ServiceProfile, plan: RoundPlan
) -> None:
    """Each name decides on one node's signals and keeps the knobs' shape and a positive quota."""
    ctl = make_controller(name, profile, seed=3)
    knobs = Knobs.initial(plan.cores)
    ctl.reset(plan, knobs)
    out = ctl.decide(signals(np.full(plan.cores.shape, 5.0)), knobs, 0.0)
    assert out.quota.shape == knobs.quota.shape and (out.quota > 0).all()


def test_unknown_name_is_refused_with_the_choices(profile: ServiceProfile) -> None:
    with pytest.raises(ValueError, match="autothrottle"):
        make_controller("pid", profile)
