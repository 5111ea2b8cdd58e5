"""A parameter sweep: Monte Carlo prices of a European call over a (volatility x strike) grid,
checked against the Black-Scholes formula. One task per grid point, run on the cluster.

    python flows/sweep.py                       # local cluster (or the block named by
                                                # PREFECT_INTEGRATIONS_DOCKERPARALLEL_CLUSTER)
    python flows/sweep.py --cluster ecs-example # a saved ClusterConfig block

`nightly_sweep` is the same flow bound to the saved ClusterConfig "nightly"; `prefect.yaml` and
`serve_nightly.py` schedule it. Edit "nightly" in the Prefect UI (Blocks page) to change the
provider, the number or size of workers: the next scheduled run uses the edit, no redeploy.
Stdlib only, so a stock worker image needs no extra packages.
"""

from __future__ import annotations

import argparse
import math
import random
from statistics import NormalDist

from prefect import flow, get_run_logger, task

from prefect_dockerparallel import DockerParallelTaskRunner

SPOT, RATE, MATURITY = 100.0, 0.03, 1.0


def black_scholes_call(spot: float, strike: float, rate: float, vol: float, maturity: float) -> float:
    """Closed-form price, the reference each Monte Carlo estimate is checked against."""
    d1 = (math.log(spot / strike) + (rate + vol * vol / 2) * maturity) / (vol * math.sqrt(maturity))
    d2 = d1 - vol * math.sqrt(maturity)
    n = NormalDist().cdf
    return spot * n(d1) - strike * math.exp(-rate * maturity) * n(d2)


@task(retries=1)
def monte_carlo_call(vol: float, strike: float, paths: int, seed: int) -> dict[str, float]:
    """Price one grid point with `paths` antithetic samples (CPU-bound: what workers are for)."""
    rng = random.Random(seed)
    drift = (RATE - vol * vol / 2) * MATURITY
    scale = vol * math.sqrt(MATURITY)
    total = 0.0
    for _ in range(paths // 2):
        z = rng.gauss(0.0, 1.0)
        for sign in (1.0, -1.0):
            total += max(SPOT * math.exp(drift + sign * scale * z) - strike, 0.0)
    price = math.exp(-RATE * MATURITY) * total / (2 * (paths // 2))
    exact = black_scholes_call(SPOT, strike, RATE, vol, MATURITY)
    return {"vol": vol, "strike": strike, "price": price, "exact": exact, "error": price - exact}


def _grid(vols: list[float], strikes: list[float]) -> tuple[list[float], list[float]]:
    pairs = [(v, k) for v in vols for k in strikes]
    return [v for v, _ in pairs], [k for _, k in pairs]


@flow(task_runner=DockerParallelTaskRunner(), log_prints=True)
def sweep(
    vols: list[float] = [0.1, 0.2, 0.3, 0.4],
    strikes: list[float] = [80.0, 90.0, 100.0, 110.0, 120.0],
    paths: int = 200_000,
) -> list[dict[str, float]]:
    """The whole grid, one task per point; returns one row per point."""
    grid_vols, grid_strikes = _grid(vols, strikes)
    seeds = list(range(len(grid_vols)))
    rows = monte_carlo_call.map(grid_vols, grid_strikes, paths, seeds).result()
    worst = max(rows, key=lambda r: abs(r["error"]))
    get_run_logger().info(
        "%d prices; worst error %.4f at vol=%.2f strike=%.0f", len(rows), worst["error"], worst["vol"], worst["strike"]
    )
    return rows


# The scheduled variant: its cluster comes from the saved ClusterConfig block "nightly",
# loaded when each run first submits a task.
nightly_sweep = sweep.with_options(name="nightly-sweep", task_runner=DockerParallelTaskRunner(cluster="nightly"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Monte Carlo parameter sweep")
    parser.add_argument("--cluster", help="name of a saved ClusterConfig block (default: local)")
    parser.add_argument("--paths", type=int, default=200_000)
    args = parser.parse_args()
    runner = DockerParallelTaskRunner(cluster=args.cluster) if args.cluster else DockerParallelTaskRunner()
    rows = sweep.with_options(task_runner=runner)(paths=args.paths)
    for row in rows:
        print(f"vol={row['vol']:.2f} strike={row['strike']:6.1f}  mc={row['price']:8.4f}  bs={row['exact']:8.4f}")
