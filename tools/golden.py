#!/usr/bin/env python3
"""Generate golden Hessian values for the brainstate-rs test suite.

Every case is differentiated with plain ``jax.hessian`` (not brainstate) in
float64, and the result is written to ``tests/fixtures/golden_hessian.json``:

    {"generator": "tools/golden.py", "jax_version": "...", "cases": [case, ...]}

Each case is

    {"name": str, "source": str, "argnums": int | [int, ...],
     "has_aux": bool, "return_value": bool,
     "args": [tree, ...],      # positional arguments
     "hessian": tree,          # jax.hessian(f, argnums, has_aux=...)(*args), hessian part only
     "value": tree | null,     # f's (primary) output when return_value, else null
     "aux": tree | null}       # f's aux output when has_aux, else null

Tree encoding (recursive):
    array (any rank, 0-d included) -> {"shape": [...], "data": [row-major float64 values]}
    tuple                          -> {"tuple": [tree, ...]}
    list                           -> {"list": [tree, ...]}
    dict                           -> {"dict": {key: tree, ...}}   (keys sorted)

Usage:  python tools/golden.py [--out PATH]
"""

import argparse
import inspect
import json
import os
import sys
import textwrap

import jax

# Everything is float64: enable x64 before any array is created.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.scipy.special import logsumexp  # noqa: E402

F64 = jnp.float64


def arr(x):
    """A float64 JAX array from a (nested) Python sequence or NumPy array."""
    return jnp.asarray(np.asarray(x, dtype=np.float64), dtype=F64)


# ---------------------------------------------------------------------------
# Case functions. Their source text is stored in the JSON (``source``) so that
# readers of the fixture can see exactly what was differentiated.
# ---------------------------------------------------------------------------

A_QUAD = arr([[1, 2, 0], [0, 3, 1], [1, 0, 2]])


def quad_sin(x):
    return x @ A_QUAD @ x + jnp.sum(jnp.sin(x))


def quad_sin_aux(x):
    return x @ A_QUAD @ x + jnp.sum(jnp.sin(x)), x * 2.0


def two_args(x, y):
    return (jnp.sum(jnp.tanh(x)[:, None] * y[None, :] ** 2)
            + jnp.dot(x, x) * jnp.sum(jnp.log1p(y ** 2)))


def pytree_dict(params, x):
    return jnp.sum(jnp.tanh(x @ params["w"] + params["b"]) ** 2)


def pytree_tuple_value_aux(p):
    # p[1][0] is the scalar b[0].
    return (jnp.sum(jnp.exp(p[0]) * p[1][0]) + jnp.sum(p[1] ** 3),
            {"s": jnp.sum(p[0])})


def nonscalar(x):
    return jnp.sin(x) * jnp.sum(x ** 2)


def tuple_output(x):
    return jnp.sum(x ** 3), x * x[0]


def matrix_arg(x):
    # logsumexp over all elements of the 2x2 matrix.
    return jnp.sum(x @ x) + logsumexp(x)


def rosen8(x):
    return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def logreg(w, X, y):
    return jnp.sum(jnp.logaddexp(0, X @ w) - y * (X @ w))


C_OPS = arr([1.0, -2.0, 0.5, 3.0])


def ops_mix(x):
    return (jnp.sum(jax.nn.softmax(x) * C_OPS)
            + jnp.max(x) * jnp.min(x)
            + jnp.sum(jax.nn.relu(x) * x)
            + jnp.sum(jnp.where(x > 0, x ** 2, jnp.sqrt(x ** 2 + 1.0)))
            + jnp.sum(jnp.expm1(x) * jax.nn.sigmoid(x))
            + jnp.mean(jnp.abs(x) * jnp.cos(x))
            + jnp.sum(jnp.maximum(x, 0.1) * jnp.minimum(x, 0.2)))


def powers(x):
    return (jnp.sum(x ** 2.5) + jnp.sum(x ** -1) + jnp.sum(jnp.log(x) * jnp.tan(x))
            + jnp.sum(x[::2] * x[1::2]))


def concat_stack(x, y):
    return (jnp.sum(jnp.concatenate([x, y * 2.0]) ** 2 * jnp.arange(5.0))
            + jnp.sum(jnp.stack([x[:2], y]) ** 3))


# ---------------------------------------------------------------------------
# Inputs (closed form, all float64).
# ---------------------------------------------------------------------------

def pytree_dict_args():
    i, j = np.arange(2)[:, None], np.arange(3)[None, :]
    w = 0.3 * np.sin(i + 2 * j + 1)                      # 2x3
    b = 0.1 * np.cos(np.arange(3))                        # 3
    i, j = np.arange(4)[:, None], np.arange(2)[None, :]
    x = np.cos(0.5 * i - 0.3 * j)                         # 4x2
    return [{"w": arr(w), "b": arr(b)}, arr(x)]


def logreg_args():
    i, j = np.arange(6)[:, None], np.arange(3)[None, :]
    X = np.sin(1.3 * i + 0.7 * j + 0.1)                   # 6x3
    y = np.where(np.cos(0.9 * np.arange(6)) > 0, 1.0, 0.0)
    w = 0.1 * np.cos(0.5 * np.arange(3))
    return [arr(w), arr(X), arr(y)]


def case_specs():
    """(name, f, args, argnums, has_aux, return_value) for every case."""
    x_quad = [arr([0.3, -0.5, 0.8])]
    x_two = [arr([0.2, -0.4, 0.6]), arr([1.5, -0.7])]
    x3 = [arr([0.5, -1.0, 1.5])]
    specs = [
        ("quad_sin", quad_sin, x_quad, 0, False, False),
        ("quad_sin_aux", quad_sin_aux, x_quad, 0, True, False),
        ("quad_sin_value", quad_sin, x_quad, 0, False, True),
        ("quad_sin_value_aux", quad_sin_aux, x_quad, 0, True, True),
        ("two_args_0", two_args, x_two, 0, False, False),
        ("two_args_1", two_args, x_two, 1, False, False),
        ("two_args_01", two_args, x_two, [0, 1], False, False),
        ("two_args_10", two_args, x_two, [1, 0], False, False),
        ("pytree_dict", pytree_dict, pytree_dict_args(), 0, False, False),
        ("pytree_tuple_value_aux", pytree_tuple_value_aux,
         [(arr([0.1, 0.2]), arr([0.5, -0.25, 0.75]))], 0, True, True),
        ("nonscalar", nonscalar, x3, 0, False, False),
        ("tuple_output", tuple_output, x3, 0, False, False),
        ("matrix_arg", matrix_arg, [arr([[0.5, -0.2], [0.3, 0.9]])], 0, False, False),
        ("rosen8", rosen8, [jnp.linspace(-1.0, 1.0, 8, dtype=F64)], 0, False, False),
        ("logreg", logreg, logreg_args(), 0, False, False),
        ("ops_mix", ops_mix, [arr([0.3, -0.7, 1.1, -0.2])], 0, False, False),
        ("powers", powers, [arr([0.4, 0.9, 1.3, 0.6])], 0, False, False),
        ("concat_stack", concat_stack, [arr([0.1, 0.2, 0.3]), arr([-0.5, 0.4])],
         [0, 1], False, False),
    ]
    return specs


# ---------------------------------------------------------------------------
# Encoding.
# ---------------------------------------------------------------------------

def encode(tree):
    """Encode a pytree of arrays with the fixture's tree encoding."""
    if isinstance(tree, tuple):
        return {"tuple": [encode(t) for t in tree]}
    if isinstance(tree, list):
        return {"list": [encode(t) for t in tree]}
    if isinstance(tree, dict):
        return {"dict": {k: encode(tree[k]) for k in sorted(tree)}}
    a = np.asarray(tree)
    if a.dtype != np.float64:
        raise TypeError(f"expected a float64 leaf, got {a.dtype}")
    return {"shape": list(a.shape), "data": [float(v) for v in a.ravel(order="C")]}


def source_of(f):
    """The function's source, plus the module constants it closes over."""
    src = textwrap.dedent(inspect.getsource(f))
    if f in (quad_sin, quad_sin_aux):
        src = "A_QUAD = jnp.array([[1., 2., 0.], [0., 3., 1.], [1., 0., 2.]])\n\n" + src
    if f is ops_mix:
        src = "C_OPS = jnp.array([1.0, -2.0, 0.5, 3.0])\n\n" + src
    return src


def run_case(name, f, args, argnums, has_aux, return_value):
    jax_argnums = tuple(argnums) if isinstance(argnums, list) else argnums
    out = jax.hessian(f, argnums=jax_argnums, has_aux=has_aux)(*args)
    hess, aux_from_hessian = (out if has_aux else (out, None))
    # value / aux come from calling f directly.
    direct = f(*args)
    value = (direct[0] if has_aux else direct) if return_value else None
    aux = direct[1] if has_aux else None
    if has_aux:
        # The aux jax.hessian returns must agree with the direct call.
        for a, b in zip(jax.tree_util.tree_leaves(aux), jax.tree_util.tree_leaves(aux_from_hessian)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0)
    return {
        "name": name,
        "source": source_of(f),
        "argnums": argnums,
        "has_aux": has_aux,
        "return_value": return_value,
        "args": [encode(a) for a in args],
        "hessian": encode(hess),
        "value": None if value is None else encode(value),
        "aux": None if aux is None else encode(aux),
    }, hess


# ---------------------------------------------------------------------------
# Sanity checks against closed forms.
# ---------------------------------------------------------------------------

def sanity_checks(hessians, specs):
    by_name = {s[0]: s for s in specs}
    tol = dict(rtol=1e-13, atol=1e-13)

    # quad_sin: H = A + A^T - diag(sin(x)), for all four variants.
    x = np.asarray(by_name["quad_sin"][2][0])
    A = np.asarray(A_QUAD)
    expect = A + A.T - np.diag(np.sin(x))
    for n in ("quad_sin", "quad_sin_aux", "quad_sin_value", "quad_sin_value_aux"):
        np.testing.assert_allclose(np.asarray(hessians[n]), expect, **tol)

    # rosen8: classic tridiagonal Rosenbrock Hessian.
    x = np.asarray(by_name["rosen8"][2][0])
    n = x.size
    H = np.zeros((n, n))
    for i in range(n - 1):
        H[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        H[i + 1, i + 1] += 200
        H[i, i + 1] -= 400 * x[i]
        H[i + 1, i] -= 400 * x[i]
    np.testing.assert_allclose(np.asarray(hessians["rosen8"]), H, **tol)

    # logreg: H = X^T diag(s (1 - s)) X with s = sigmoid(X w).
    w, X, _ = (np.asarray(a) for a in by_name["logreg"][2])
    s = 1 / (1 + np.exp(-(X @ w)))
    np.testing.assert_allclose(np.asarray(hessians["logreg"]), X.T @ (X * (s * (1 - s))[:, None]), **tol)

    # two_args_01 blocks must equal the single-argnum Hessians; two_args_10 is its transpose.
    h01, h10 = hessians["two_args_01"], hessians["two_args_10"]
    np.testing.assert_allclose(np.asarray(h01[0][0]), np.asarray(hessians["two_args_0"]), **tol)
    np.testing.assert_allclose(np.asarray(h01[1][1]), np.asarray(hessians["two_args_1"]), **tol)
    np.testing.assert_allclose(np.asarray(h10[0][1]), np.asarray(h01[1][0]), **tol)
    np.testing.assert_allclose(np.asarray(h01[0][1]), np.asarray(h01[1][0]).T, **tol)

    # nonscalar: f_k = sin(x_k) S, S = sum x^2;
    # d2 f_k / dx_i dx_j = -sin(x_k) S d_ki d_kj + 2 cos(x_k)(d_ki x_j + d_kj x_i) + 2 sin(x_k) d_ij
    x = np.asarray(by_name["nonscalar"][2][0])
    S, n = np.sum(x ** 2), x.size
    I = np.eye(n)
    H = (-np.sin(x)[:, None, None] * S * I[:, :, None] * I[:, None, :]
         + 2 * np.cos(x)[:, None, None] * (I[:, :, None] * x[None, None, :] + I[:, None, :] * x[None, :, None])
         + 2 * np.sin(x)[:, None, None] * I[None, :, :])
    np.testing.assert_allclose(np.asarray(hessians["nonscalar"]), H, **tol)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "golden_hessian.json"))
    opts = parser.parse_args()

    specs = case_specs()
    cases, hessians = [], {}
    for spec in specs:
        case, hess = run_case(*spec)
        cases.append(case)
        hessians[spec[0]] = hess

    sanity_checks(hessians, specs)

    doc = {"generator": "tools/golden.py", "jax_version": jax.__version__, "cases": cases}
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")

    # Short summary: shapes of the Hessian leaves and their sum.
    print(f"jax {jax.__version__}: wrote {len(cases)} cases to {os.path.relpath(opts.out)}")
    for spec in specs:
        leaves = jax.tree_util.tree_leaves(hessians[spec[0]])
        shapes = " ".join("x".join(map(str, l.shape)) or "()" for l in leaves)
        total = sum(float(np.sum(l)) for l in leaves)
        print(f"  {spec[0]:24s} leaves: {shapes:40s} sum={total:.12g}")
    print("closed-form sanity checks passed (quad_sin, rosen8, logreg, two_args blocks, nonscalar)")


if __name__ == "__main__":
    sys.exit(main())
