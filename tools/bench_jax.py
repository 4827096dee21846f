#!/usr/bin/env python3
"""The standard Hessian benchmark suite (/work/shared/BENCHMARKS.md) on plain JAX.

Both tables of BENCHMARKS.md are run. Each case builds a fresh transform object
with the table's anchor and reports, as one JSON line on stdout:

    {"case": ..., "engine": "jax <version>", "first_call_s": ..., "median_s": ...,
     "reps": ..., "checksum": ..., "frobenius": ...}

Anchors (the transform object timed by ``first_call_s``):

- dense cases (all of the first table, ``mlp_1089``, ``rnn_n10_t1000``):
  ``jax.jit(jax.hessian(f))``;
- ``hvp_mlp_1089``: ``jax.jit`` of forward-over-reverse
  ``jax.jvp(lambda q: jax.grad(loss)(q, X, y), (p,), (v,))[1]``;
- ``sparse_rosen_*``: ``jax.jit(asdex.hessian(f, x))``, a
  ``jax.experimental.sparse.BCOO`` result. ``asdex.hessian`` itself detects
  the sparsity pattern and colors it, so it is built inside the timed first
  call. These lines also carry ``"nnz"``, the number of stored entries.

- ``first_call_s``: wall time of building the transform object and its first
  call (trace + [sparsity detection + coloring] + compile + run), blocked with
  ``block_until_ready``.
- ``median_s``: median wall time of ``reps`` further calls on the same inputs:
  at least 30 when a call takes under 10 ms, otherwise 5 (the minimum BENCHMARKS.md
  allows), and enough calls to span about ``WINDOW_S`` (at most ``MAX_REPS``), so that
  a short burst of load on the shared machine does not move the median. The Rust
  runner (``benches/suite.rs``) uses the same rule.
- ``checksum``: sum of all result entries over all pytree leaves ([re, im] for
  the complex case; the stored entries for sparse results); ``frobenius``:
  sqrt(sum |h|^2) over the same entries.

The last line reports the process: {"engine": "jax <version>", "maxrss_mb": ...}.
With ``--each-process`` every case runs in a fresh subprocess of this script,
each case line gets its own ``"maxrss_mb"`` (peak RSS of that subprocess), and
the last line reports the largest of them. Only JSON goes to stdout; mismatches
against the BENCHMARKS.md tables (relative error > 1e-9, or a different nnz)
are reported on stderr.

Differentiated arguments (BENCHMARKS.md "differentiate w.r.t."): the state
cases take their states as ordinary function arguments -- ``w`` for logreg,
the dict {W1, b1, W2, b2} for mlp_177, {W1, b1, W2, b2, W3, b3} for mlp_1089
and hvp_mlp_1089, ``W`` for rnn -- and ``z`` for holo_n64
(``holomorphic=True``). Non-differentiated data are passed as extra arguments
(argnums=0), so jit does not fold them in as constants. ``rnn_n10_t50`` loops
with ``jax.lax.fori_loop``, ``rnn_n10_t1000`` with ``jax.lax.scan`` (the v2
table's anchor).

Usage:  python tools/bench_jax.py [--cases rosen_n16,mlp_177,...] [--each-process]
        (all cases of both tables by default; sparse_rosen_n1000000 alone takes
        about 40 s and 4 GB)
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import jax

# Everything is float64 / complex128.
jax.config.update("jax_enable_x64", True)

import asdex  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import sparse as jsparse  # noqa: E402

ENGINE = f"jax {jax.__version__}"

# Reference values from BENCHMARKS.md (JAX 0.10.2, float64; sparse cases by
# asdex 0.5): (checksum, frobenius) or (checksum, frobenius, nnz).
REFERENCE = {
    "rosen_n16": (9483.333333333334, 3075.704291522332),
    "rosen_n128": (76860.29921259843, 9063.19649059404),
    "rosen_n1024": (616246.7820136853, 25785.33903507017),
    "rosen_n4096": (2465590.1953601954, 51603.51426019164),
    "logreg_d64_m512": (86.03919643917087, 2896.729032029705),
    "mlp_177": (155.0730197800209, 19.335259374751804),
    "rnn_n10_t50": (26.128710259876808, 14.91770277689367),
    "holo_n64": (189.46254282939532 + 0.5719909958350442j, 66.07975684671489),
    # Second table (v2).
    "mlp_1089": (-143.7547920182827, 16.033867799465852),
    "hvp_mlp_1089": (-1.1116941777168647, 6.115135730980358),
    "sparse_rosen_n4096": (2465590.1953601954, 51603.51426019164, 12286),
    "sparse_rosen_n1000000": (601999798.0008, 806475.5837586673, 2999998),
    "rnn_n10_t1000": (30.625021375982897, 16.864734939811154),
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


def mlp3(params, X, y):
    """The v2 two-hidden-layer MLP loss (mlp_1089, hvp_mlp_1089)."""
    h1 = jnp.tanh(X @ params["W1"] + params["b1"])
    h2 = jnp.tanh(h1 @ params["W2"] + params["b2"])
    out = h2 @ params["W3"] + params["b3"]
    return jnp.mean((out - y) ** 2)


RNN_DT, RNN_TAU = 0.1, 1.0


def rnn_step(W, I, r):
    return r + (RNN_DT / RNN_TAU) * (-r + jnp.tanh(W @ r + I))


def rnn(W, I, target):
    """rnn_n10_t50: 50 steps through jax.lax.fori_loop."""
    r = jax.lax.fori_loop(0, 50, lambda _, r: rnn_step(W, I, r), jnp.zeros_like(I))
    return jnp.sum((r - target) ** 2)


def rnn_scan(W, I, target):
    """rnn_n10_t1000: 1000 steps through jax.lax.scan (the v2 anchor)."""
    r, _ = jax.lax.scan(lambda r, _: (rnn_step(W, I, r), None), jnp.zeros_like(I),
                        None, length=1000)
    return jnp.sum((r - target) ** 2)


def holo(z):
    return jnp.sum(z ** 3 + jnp.exp(z) * z)


# ---------------------------------------------------------------------------
# Closed-form inputs (0-based indices), built in NumPy float64.
# Each *_case returns (f, args, hessian kwargs).
# ---------------------------------------------------------------------------

def f64(a):
    return jnp.asarray(a, jnp.float64)


def rosen_case(n):
    return rosen, (jnp.linspace(-1.0, 1.0, n, dtype=jnp.float64),), {}


def logreg_case():
    d, m = 64, 512
    i, j = np.arange(m)[:, None], np.arange(d)[None, :]
    X = np.sin(1.3 * i + 0.7 * j + 0.1)
    y = np.where(np.cos(0.9 * np.arange(m)) > 0, 1.0, 0.0)
    w = 0.01 * np.cos(0.5 * np.arange(d))
    return logreg, tuple(f64(a) for a in (w, X, y)), {}


def mlp_case():
    i, j = np.arange(8)[:, None], np.arange(16)[None, :]
    W1 = 0.3 * np.sin(0.5 * i + 0.3 * j + 0.2)                    # 8x16
    b1 = 0.1 * np.cos(np.arange(16))                              # 16
    W2 = (0.3 * np.cos(0.4 * np.arange(16) + 0.1))[:, None]       # 16x1
    b2 = np.array([0.05])                                         # 1
    i, j = np.arange(32)[:, None], np.arange(8)[None, :]
    Xb = np.sin(0.7 * i - 0.2 * j)                                # 32x8
    yb = np.cos(0.3 * np.arange(32))[:, None]                     # 32x1
    params = {"W1": f64(W1), "b1": f64(b1), "W2": f64(W2), "b2": f64(b2)}
    return mlp, (params, f64(Xb), f64(yb)), {}


def mlp3_case():
    i, j = np.arange(16)[:, None], np.arange(32)[None, :]
    W1 = 0.3 * np.sin(0.5 * i + 0.3 * j + 0.2)                    # 16x32
    b1 = 0.1 * np.cos(np.arange(32))                              # 32
    i, j = np.arange(32)[:, None], np.arange(16)[None, :]
    W2 = 0.2 * np.cos(0.4 * i + 0.7 * j + 0.1)                    # 32x16
    b2 = 0.05 * np.sin(np.arange(16))                             # 16
    W3 = (0.3 * np.cos(0.2 * np.arange(16) + 0.3))[:, None]       # 16x1
    b3 = np.array([0.05])                                         # 1
    i, j = np.arange(256)[:, None], np.arange(16)[None, :]
    X = np.sin(0.7 * i - 0.2 * j)                                 # 256x16
    y = np.cos(0.3 * np.arange(256))[:, None]                     # 256x1
    params = {"W1": f64(W1), "b1": f64(b1), "W2": f64(W2), "b2": f64(b2),
              "W3": f64(W3), "b3": f64(b3)}
    return mlp3, (params, f64(X), f64(y)), {}


def rnn_case(f=rnn):
    n = 10
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    W = 0.5 / np.sqrt(n) * np.sin(1.1 * i + 0.6 * j + 0.3)
    I = np.cos(0.8 * np.arange(n))
    target = 0.1 * np.sin(0.5 * np.arange(n))
    return f, tuple(f64(a) for a in (W, I, target)), {}


def holo_case():
    k = np.arange(64)
    z = np.cos(0.3 * k) + 0.5j * np.sin(0.7 * k)
    return holo, (jnp.asarray(z, jnp.complex128),), {"holomorphic": True}


# ---------------------------------------------------------------------------
# Anchors: each returns (make, args), where make() builds the fresh transform
# object (inside the timed first call) and make()(*args) computes the result.
# ---------------------------------------------------------------------------

def dense(f, args, hess_kwargs):
    """jax.jit(jax.hessian(f)) w.r.t. the first argument."""
    return (lambda: jax.jit(jax.hessian(f, argnums=0, **hess_kwargs))), args


def hvp(f, args, _hess_kwargs):
    """jax.jit of forward-over-reverse H v w.r.t. the first argument; each
    leaf of v is v[k] = cos(0.1 k + 0.2) over its flat row-major index k."""
    p, *data = args
    v = jax.tree_util.tree_map(
        lambda a: f64(np.cos(0.1 * np.arange(a.size) + 0.2).reshape(a.shape)), p)

    def make():
        return jax.jit(lambda p, v, *data: jax.jvp(
            lambda q: jax.grad(f)(q, *data), (p,), (v,))[1])

    return make, (p, v, *data)


def sparse(f, args, _hess_kwargs):
    """jax.jit(asdex.hessian(f, x)): a BCOO Hessian w.r.t. the first argument.
    asdex.hessian detects the sparsity and colors it when built, i.e. in make()."""
    return (lambda: jax.jit(asdex.hessian(f, *args))), args


CASES = {
    "rosen_n16": lambda: dense(*rosen_case(16)),
    "rosen_n128": lambda: dense(*rosen_case(128)),
    "rosen_n1024": lambda: dense(*rosen_case(1024)),
    "rosen_n4096": lambda: dense(*rosen_case(4096)),
    "logreg_d64_m512": lambda: dense(*logreg_case()),
    "mlp_177": lambda: dense(*mlp_case()),
    "rnn_n10_t50": lambda: dense(*rnn_case()),
    "holo_n64": lambda: dense(*holo_case()),
    # Second table (v2).
    "mlp_1089": lambda: dense(*mlp3_case()),
    "hvp_mlp_1089": lambda: hvp(*mlp3_case()),
    "sparse_rosen_n4096": lambda: sparse(*rosen_case(4096)),
    "sparse_rosen_n1000000": lambda: sparse(*rosen_case(1_000_000)),
    "rnn_n10_t1000": lambda: dense(*rnn_case(rnn_scan)),
}


# ---------------------------------------------------------------------------
# Running and reporting.
# ---------------------------------------------------------------------------

def block(tree):
    for leaf in jax.tree_util.tree_leaves(tree):
        leaf.block_until_ready()
    return tree


def summarize(result):
    """(checksum, frobenius, nnz) over all leaves (the stored entries of a BCOO,
    whose nnz is reported; None otherwise), accumulated in float64/complex128."""
    if isinstance(result, jsparse.BCOO):
        leaves, nnz = [np.asarray(result.data)], int(result.nse)
    else:
        leaves, nnz = [np.asarray(l) for l in jax.tree_util.tree_leaves(result)], None
    checksum = sum(l.sum() for l in leaves)
    frobenius = math.sqrt(sum(float(np.sum(np.abs(l) ** 2)) for l in leaves))
    return checksum, frobenius, nnz


def check_reference(name, checksum, frobenius, nnz):
    ref_sum, ref_fro, *ref_nnz = REFERENCE[name]
    for what, got, ref in (("checksum", checksum, ref_sum), ("frobenius", frobenius, ref_fro)):
        rel = abs(got - ref) / abs(ref)
        if rel > REL_TOL:
            print(f"WARNING: {name} {what} = {got!r}, reference {ref!r} (rel. error {rel:.3g})",
                  file=sys.stderr)
    if ref_nnz and nnz != ref_nnz[0]:
        print(f"WARNING: {name} nnz = {nnz}, reference {ref_nnz[0]}", file=sys.stderr)



# The timed calls span about this long (see ``repetitions``).
WINDOW_S = 0.3
MAX_REPS = 5000


def repetitions(call_s):
    """Timed calls for a case whose warm call took ``call_s``: the minimum of
    BENCHMARKS.md (30 under 10 ms, else 5), or enough to span ``WINDOW_S``."""
    least = 30 if call_s < 10e-3 else 5
    return max(least, min(MAX_REPS, math.ceil(WINDOW_S / max(call_s, 1e-9))))


def run_case(name):
    make, args = CASES[name]()
    block(args)

    # Fresh transform object: the first call builds it, traces, compiles and runs.
    t0 = time.perf_counter()
    fn = make()
    result = block(fn(*args))
    first_call_s = time.perf_counter() - t0

    # One untimed warm call decides the number of repetitions.
    t0 = time.perf_counter()
    block(fn(*args))
    reps = repetitions(time.perf_counter() - t0)

    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        block(fn(*args))
        times.append(time.perf_counter() - t0)

    checksum, frobenius, nnz = summarize(result)
    check_reference(name, checksum, frobenius, nnz)
    if np.iscomplexobj(checksum):
        checksum_json = [float(checksum.real), float(checksum.imag)]
    else:
        checksum_json = float(checksum)
    line = {"case": name, "engine": ENGINE, "first_call_s": first_call_s,
            "median_s": statistics.median(times), "reps": reps,
            "checksum": checksum_json, "frobenius": frobenius}
    if nnz is not None:
        line["nnz"] = nnz
    return line


def run_each_process(names):
    """Runs every case in a fresh `python bench_jax.py --cases NAME` and prints
    its case line with that process's maxrss_mb added. Returns the number of
    cases whose subprocess failed."""
    failures = 0
    for name in names:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--cases", name],
                              stdout=subprocess.PIPE, text=True)  # stderr passes through
        lines = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
        case = next((l for l in lines if l.get("case") == name), None)
        rss = next((l["maxrss_mb"] for l in reversed(lines) if "maxrss_mb" in l), None)
        if proc.returncode != 0 or case is None:
            print(f"WARNING: case {name} failed (exit code {proc.returncode})", file=sys.stderr)
            failures += 1
            continue
        case["maxrss_mb"] = rss
        print(json.dumps(case), flush=True)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument("--each-process", action="store_true",
                        help="run every case in a fresh subprocess and add its own "
                             "maxrss_mb to its line")
    opts = parser.parse_args()
    names = [c.strip() for c in opts.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")

    failures = 0
    if opts.each_process:
        failures = run_each_process(names)
        # The largest peak RSS among the (waited-for) case subprocesses.
        who = resource.RUSAGE_CHILDREN
    else:
        for name in names:
            print(json.dumps(run_case(name)), flush=True)
        who = resource.RUSAGE_SELF

    # ru_maxrss is in KiB on Linux.
    maxrss_mb = resource.getrusage(who).ru_maxrss / 1024.0
    print(json.dumps({"engine": ENGINE, "maxrss_mb": round(maxrss_mb, 1)}), flush=True)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
