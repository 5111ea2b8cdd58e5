"""The realistic example flow (flows/sweep.py) computes the right numbers on the local cluster."""

from __future__ import annotations

import sys

import pytest

from prefect_server import REPO

sys.path.insert(0, str(REPO / "flows"))

import sweep as sweep_example  # noqa: E402  (flows/sweep.py)

pytestmark = pytest.mark.usefixtures("no_leftover_processes")


def test_black_scholes_reference_price() -> None:
    # Textbook value: S=100, K=100, r=3%, sigma=20%, T=1 -> 9.4134
    assert sweep_example.black_scholes_call(100, 100, 0.03, 0.2, 1.0) == pytest.approx(9.4134, abs=1e-3)


def test_sweep_prices_every_grid_point_close_to_black_scholes(prefect_server_session) -> None:  # noqa: ANN001
    rows = sweep_example.sweep(vols=[0.1, 0.3], strikes=[90.0, 110.0], paths=20_000)
    assert sorted((r["vol"], r["strike"]) for r in rows) == [(0.1, 90.0), (0.1, 110.0), (0.3, 90.0), (0.3, 110.0)]
    for row in rows:
        # 20k antithetic paths: the standard error is well under 0.3 for these prices.
        assert abs(row["error"]) < 0.3, row


def test_nightly_variant_is_bound_to_the_nightly_block() -> None:
    assert sweep_example.nightly_sweep.name == "nightly-sweep"
    assert sweep_example.nightly_sweep.task_runner.cluster == "nightly"
