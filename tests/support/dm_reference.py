"""The Diebold-Mariano test as statsmodels and scipy compute it: the reference the Rust test
(`monitor::compare`) is held to.

Reads the JSON file named by its argument: {"cases": [{"differentials": [...], "horizon_origins": h}, ...]}.
Prints JSON: [{"mean", "statistic", "p_value"}, ...], one per case.

The variance is statsmodels' HAC covariance of the differential regressed on a constant
(`sandwich_covariance.cov_hac` over h - 1 lags, its default small-sample correction), with uniform
weights (the truncated kernel Harvey, Leybourne and Newbold's factor is derived for), or Bartlett's
where that is not positive; the statistic gets the HLN factor and a Student-t tail with T - 1
degrees of freedom (scipy).
"""
import json
import sys

import numpy as np
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.sandwich_covariance import cov_hac, weights_bartlett, weights_uniform


def dm(differentials, horizon_origins):
    d = np.asarray(differentials, dtype=float)
    t = len(d)
    h = max(int(horizon_origins), 1)
    fit = sm.OLS(d, np.ones((t, 1))).fit()
    lags = min(h - 1, t - 1)
    variance = cov_hac(fit, nlags=lags, weights_func=weights_uniform)[0, 0]
    if not variance > 0:
        variance = cov_hac(fit, nlags=lags, weights_func=weights_bartlett)[0, 0]
    hln = np.sqrt((t + 1 - 2 * h + h * (h - 1) / t) / t)
    statistic = fit.params[0] / np.sqrt(variance) * hln
    p_value = 2 * stats.t.sf(abs(statistic), df=t - 1)
    return {"mean": float(fit.params[0]), "statistic": float(statistic), "p_value": float(p_value)}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)["cases"]
    json.dump([dm(c["differentials"], c["horizon_origins"]) for c in cases], sys.stdout)
