#!/usr/bin/env python3
"""The standard Hessian benchmark suite (/work/shared/BENCHMARKS.md) on plain JAX.

Each case builds a fresh ``jax.jit(jax.hessian(f))`` and reports, as one JSON
line on stdout:

    {"case": ..., "engine": "jax <version>", "first_call_s": ..., "median_s": ...,
     "reps": ..., "checksum": ..., "frobenius": ...}

- ``first_call_s``: wall time of the first call (trace + compile + run), blocked
  with ``block_until_ready``.
- ``median_s``: median wall time of ``reps`` further calls on the same inputs;
  30 reps when a call takes under 10 ms, otherwise 5 (the minimum BENCHMARKS.md allows).
- ``checksum``: sum of all Hessian entries over all pytree leaves ([re, im] for
  the complex case); ``frobenius``: sqrt(sum |h|^2).

The last line reports the process: {"engine": "jax <version>", "maxrss_mb": ...}.
Only JSON goes to stdout; checksum mismatches against the BENCHMARKS.md table
(relative error > 1e-9) are reported on stderr.

Differentiated arguments (BENCHMARKS.md "differentiate w.r.t."): the state
cases take their states as ordinary function arguments -- ``w`` for logreg,
the dict {W1, b1, W2, b2} for mlp_177, ``W`` for rnn -- and ``z`` for holo_n64
(``holomorphic=True``). Non-differentiated data are passed as extra arguments
(argnums=0), so jit does not fold them in as constants.

Usage:  python tools/bench_jax.py [--cases rosen_n16,mlp_177,...]
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import jax

# Everything is float64 / complex128.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ENGINE = f"jax {jax.__version__}"

# Reference values from BENCHMARKS.md (JAX 0.10.2, float64): (checksum, frobenius).
REFERENCE = {
    "rosen_n16": (9483.333333333334, 3075.704291522332),
    "rosen_n128": (76860.29921259843, 9063.19649059404),
    "rosen_n1024": (616246.7820136853, 25785.33903507017),
    "rosen_n4096": (2465590.1953601954, 51603.51426019164),
    "logreg_d64_m512": (86.03919643917087, 2896.729032029705),
    "mlp_177": (155.0730197800209, 19.335259374751804),
    "rnn_n10_t50": (26.128710259876808, 14.91770277689367),
    "holo_n64": (189.46254282939532 + 0.5719909958350442j, 66.07975684671489),
}
REL_TOL = 1e-9


# ---------------------------------------------------------------------------
# Case functions (the first argument is the one differentiated).
# ---------------------------------------------------------------------------

def rosen(x):
    return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def logreg(w, X, y):
    z = X @ w
    return jnp.sum(jnp.logaddexp(0.0, z) - y * z)


def mlp(params, Xb, yb):
    h = jnp.tanh(Xb @ params["W1"] + params["b1"])
    out = h @ params["W2"] + params["b2"]
    return jnp.mean((out - yb) ** 2)


RNN_DT, RNN_TAU, RNN_STEPS = 0.1, 1.0, 50


def rnn(W, I, target):
    def step(_, r):
        return r + (RNN_DT / RNN_TAU) * (-r + jnp.tanh(W @ r + I))

    r = jax.lax.fori_loop(0, RNN_STEPS, step, jnp.zeros_like(I))
    return jnp.sum((r - target) ** 2)


def holo(z):
    return jnp.sum(z ** 3 + jnp.exp(z) * z)


# ---------------------------------------------------------------------------
# Closed-form inputs (0-based indices), built in NumPy float64.
# ---------------------------------------------------------------------------

def rosen_case(n):
    return rosen, (jnp.linspace(-1.0, 1.0, n, dtype=jnp.float64),), {}


def logreg_case():
    d, m = 64, 512
    i, j = np.arange(m)[:, None], np.arange(d)[None, :]
    X = np.sin(1.3 * i + 0.7 * j + 0.1)
    y = np.where(np.cos(0.9 * np.arange(m)) > 0, 1.0, 0.0)
    w = 0.01 * np.cos(0.5 * np.arange(d))
    return logreg, tuple(jnp.asarray(a, jnp.float64) for a in (w, X, y)), {}


def mlp_case():
    i, j = np.arange(8)[:, None], np.arange(16)[None, :]
    W1 = 0.3 * np.sin(0.5 * i + 0.3 * j + 0.2)                    # 8x16
    b1 = 0.1 * np.cos(np.arange(16))                              # 16
    W2 = (0.3 * np.cos(0.4 * np.arange(16) + 0.1))[:, None]       # 16x1
    b2 = np.array([0.05])                                         # 1
    i, j = np.arange(32)[:, None], np.arange(8)[None, :]
    Xb = np.sin(0.7 * i - 0.2 * j)                                # 32x8
    yb = np.cos(0.3 * np.arange(32))[:, None]                     # 32x1
    f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
    params = {"W1": f64(W1), "b1": f64(b1), "W2": f64(W2), "b2": f64(b2)}
    return mlp, (params, f64(Xb), f64(yb)), {}


def rnn_case():
    n = 10
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    W = 0.5 / np.sqrt(n) * np.sin(1.1 * i + 0.6 * j + 0.3)
    I = np.cos(0.8 * np.arange(n))
    target = 0.1 * np.sin(0.5 * np.arange(n))
    return rnn, tuple(jnp.asarray(a, jnp.float64) for a in (W, I, target)), {}


def holo_case():
    k = np.arange(64)
    z = np.cos(0.3 * k) + 0.5j * np.sin(0.7 * k)
    return holo, (jnp.asarray(z, jnp.complex128),), {"holomorphic": True}


CASES = {
    "rosen_n16": lambda: rosen_case(16),
    "rosen_n128": lambda: rosen_case(128),
    "rosen_n1024": lambda: rosen_case(1024),
    "rosen_n4096": lambda: rosen_case(4096),
    "logreg_d64_m512": logreg_case,
    "mlp_177": mlp_case,
    "rnn_n10_t50": rnn_case,
    "holo_n64": holo_case,
}


# ---------------------------------------------------------------------------
# Running and reporting.
# ---------------------------------------------------------------------------

def block(tree):
    for leaf in jax.tree_util.tree_leaves(tree):
        leaf.block_until_ready()
    return tree


def summarize(hess):
    """(checksum, frobenius) over all leaves, accumulated in float64/complex128."""
    leaves = [np.asarray(l) for l in jax.tree_util.tree_leaves(hess)]
    checksum = sum(l.sum() for l in leaves)
    frobenius = math.sqrt(sum(float(np.sum(np.abs(l) ** 2)) for l in leaves))
    return checksum, frobenius


def check_reference(name, checksum, frobenius):
    ref_sum, ref_fro = REFERENCE[name]
    for what, got, ref in (("checksum", checksum, ref_sum), ("frobenius", frobenius, ref_fro)):
        rel = abs(got - ref) / abs(ref)
        if rel > REL_TOL:
            print(f"WARNING: {name} {what} = {got!r}, reference {ref!r} (rel. error {rel:.3g})",
                  file=sys.stderr)


def run_case(name):
    f, args, hess_kwargs = CASES[name]()
    block(args)

    # Fresh transform object: the first call traces, compiles and runs.
    hess_fn = jax.jit(jax.hessian(f, argnums=0, **hess_kwargs))
    t0 = time.perf_counter()
    hess = block(hess_fn(*args))
    first_call_s = time.perf_counter() - t0

    # One untimed warm call decides the number of repetitions.
    t0 = time.perf_counter()
    block(hess_fn(*args))
    reps = 30 if time.perf_counter() - t0 < 10e-3 else 5

    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        block(hess_fn(*args))
        times.append(time.perf_counter() - t0)

    checksum, frobenius = summarize(hess)
    check_reference(name, checksum, frobenius)
    if np.iscomplexobj(checksum):
        checksum_json = [float(checksum.real), float(checksum.imag)]
    else:
        checksum_json = float(checksum)
    return {"case": name, "engine": ENGINE, "first_call_s": first_call_s,
            "median_s": statistics.median(times), "reps": reps,
            "checksum": checksum_json, "frobenius": frobenius}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated subset of: " + ", ".join(CASES))
    opts = parser.parse_args()
    names = [c.strip() for c in opts.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")

    for name in names:
        print(json.dumps(run_case(name)), flush=True)

    # ru_maxrss is in KiB on Linux.
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"engine": ENGINE, "maxrss_mb": round(maxrss_mb, 1)}), flush=True)


if __name__ == "__main__":
    main()
