"""The KL budget under pressure: the adaptive controller, not the learning rate, decides how far a run drifts.

A learning rate several times the default drives a fixed-β run far from its start; the same run with the default
budget stays near it and still gains; a smaller budget drifts less than a larger one. Fixed seeds, update counts,
128 fresh samples per measurement (slow: CI runs them).
"""

from __future__ import annotations

import pytest
from test_learning import train

pytestmark = pytest.mark.slow

PRESSURE = {"learning_rate": 6e-4}


def test_the_budget_holds_a_hard_pushed_run_where_a_fixed_beta_drifts_away(tiny_kit):
    # GRPO drifts furthest at a fixed β (its KL term is a per-token mean); 6× its learning rate pushes it harder
    _, _, kl_fixed, _ = train(tiny_kit, "grpo", 80, kl_target=None, **PRESSURE)
    before, budget, kl_budget, algo = train(tiny_kit, "grpo", 80, **PRESSURE)
    assert kl_budget <= 3.5, f"KL {kl_budget:.2f} with the 2-nat budget"
    assert kl_fixed >= 1.5 * kl_budget, f"β fixed at its start: KL {kl_fixed:.2f}; with the budget: {kl_budget:.2f}"
    assert budget - before >= 0.3
    assert algo.kl_ctl.value > algo.config.beta  # the controller raised β to hold the budget


def test_a_smaller_budget_drifts_less(tiny_kit):
    _, _, kl_small, _ = train(tiny_kit, "grpo", 80, kl_target=0.5, **PRESSURE)
    _, _, kl_large, _ = train(tiny_kit, "grpo", 80, kl_target=4.0, **PRESSURE)
    assert kl_small <= 1.5, kl_small
    assert kl_large >= 2 * kl_small, f"budget 0.5: KL {kl_small:.2f}; budget 4: KL {kl_large:.2f}"
