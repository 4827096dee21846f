#!/usr/bin/env python3
"""Generate golden holomorphic Hessians for tests/complex.rs.

Every case is differentiated with plain ``jax.hessian(..., holomorphic=True)`` in
complex128, and the result is written to ``tests/fixtures/golden_complex.json``:

    {"generator": "tools/golden_complex.py", "jax_version": "...", "cases": [case, ...]}

Each case is

    {"name": str, "source": str, "argnums": int | [int, ...],
     "has_aux": bool, "return_value": bool,
     "args": [tree, ...],      # positional arguments
     "hessian": tree,          # the Hessian part of jax.hessian's result
     "value": tree | null,     # f's (primary) output when return_value, else null
     "aux": tree | null,       # f's aux output when has_aux, else null
     "state": tree | null}     # state cases only, see below

A *state case* is a function ``f(z_state, *args)`` of a complex state (its first
parameter here) that the Rust test reads from a ``State``. Its ``hessian`` is JAX's
Hessian over ``(z_state, *args)`` (argnums ``(0, 1, ...)``), the joint Hessian of
case 3; ``state`` holds the state's value and ``args`` the remaining arguments. The
Rust test compares ``hessian(f).grad_states(&z)`` (case 2) with block ``[0][0]``,
``.argnums(0)`` (case 3) with ``([0][0], [1][1])`` and ``.joint()`` with the whole.

Tree encoding (recursive):
    array (any rank, 0-d included) -> {"shape": [...], "re": [...], "im": [...]}
                                      (row-major; real arrays have zero "im")
    tuple                          -> {"tuple": [tree, ...]}

Usage:  python tools/golden_complex.py [--out PATH]
"""

import argparse
import inspect
import json
import os
import textwrap

import jax

# Everything is complex128 / float64: enable x64 before any array is created.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

C128 = jnp.complex128


def carr(re, im):
    """A complex128 array from real and imaginary parts (nested sequences)."""
    return jnp.asarray(np.asarray(re, dtype=np.float64) + 1j * np.asarray(im, dtype=np.float64),
                       dtype=C128)


# ---------------------------------------------------------------------------
# Inputs and constants (the Rust test rebuilds the constants from these values).
# ---------------------------------------------------------------------------

Z3 = carr([0.3, -0.5, 0.8], [0.2, 0.4, -0.6])
W2 = carr([0.7, -0.2], [-0.3, 0.5])
Z4 = carr([0.1, -0.4, 0.6, 0.25], [0.5, 0.2, -0.3, -0.1])
# A[i, j] = 0.3 sin(i + 0.7 j + 0.2) + 0.2i cos(0.5 i - j)  (3 x 4)
A34 = carr([[0.3 * np.sin(i + 0.7 * j + 0.2) for j in range(4)] for i in range(3)],
           [[0.2 * np.cos(0.5 * i - j) for j in range(4)] for i in range(3)])
# c[i] = cos(0.9 i) - 0.5i sin(0.4 i + 0.3)
C3 = carr([np.cos(0.9 * i) for i in range(3)], [-0.5 * np.sin(0.4 * i + 0.3) for i in range(3)])
ZS = carr([0.4, -0.3], [0.1, 0.6])
X3 = carr([0.2, 0.5, -0.7], [-0.4, 0.3, 0.1])


# ---------------------------------------------------------------------------
# Case functions. Their source is stored in the JSON (``source``).
# ---------------------------------------------------------------------------

def cubic(z):
    return jnp.sum(z ** 3 + 2 * z ** 2 - z)


def cubic_aux(z):
    return jnp.sum(z ** 3 + 2 * z ** 2 - z), z * 2.0


def two_poly(z, w):
    return jnp.sum(z[:, None] ** 2 * w[None, :] ** 3) + (jnp.sum(z) * jnp.sum(w)) ** 2


def exp_z_z(z):
    return jnp.sum(jnp.exp(z) * z)


def matvec_tanh(z):
    return jnp.sum(jnp.tanh(A34 @ z) * C3)


def matvec_tanh_az(a, z):
    return jnp.sum(jnp.tanh(a @ z) * C3)


def nonscalar(z):
    return jnp.sin(z) * jnp.sum(z ** 2)


def tuple_output(z):
    return jnp.sum(z ** 3), z * z[0]


def state_model(zs, x):
    """A holomorphic function of a complex state ``zs`` and an argument ``x``."""
    return (jnp.sum(zs ** 2 * x[:2]) + jnp.sum(jnp.exp(zs) * zs)
            + jnp.sum(x ** 3) * jnp.sum(zs))


def state_log(zs, x):
    return jnp.sum(jnp.log(zs + 2.0) * x[:2]) + jnp.sum(jnp.sqrt(x + 3.0)) * zs[0] ** 2


# ---------------------------------------------------------------------------
# Encoding.
# ---------------------------------------------------------------------------

def encode(tree):
    if isinstance(tree, tuple):
        return {"tuple": [encode(t) for t in tree]}
    a = np.asarray(tree)
    c = a.astype(np.complex128)
    return {"shape": list(a.shape),
            "re": [float(v) for v in c.real.ravel()],
            "im": [float(v) for v in c.imag.ravel()]}


def case(name, fn, args, argnums=0, has_aux=False, return_value=False, extra_source=""):
    h = jax.hessian(fn, argnums=argnums, has_aux=has_aux, holomorphic=True)(*args)
    aux = None
    if has_aux:
        h, aux = h
    value = None
    if return_value:
        out = fn(*args)
        value = out[0] if has_aux else out
    return {
        "name": name,
        "source": extra_source + textwrap.dedent(inspect.getsource(fn)),
        "argnums": list(argnums) if isinstance(argnums, tuple) else argnums,
        "has_aux": has_aux,
        "return_value": return_value,
        "args": [encode(a) for a in args],
        "hessian": encode(h),
        "value": None if value is None else encode(value),
        "aux": None if aux is None else encode(aux),
        "state": None,
    }


def state_case(name, fn, state, args):
    """Hessian over (state, *args), as JAX sees a state passed as the first argument."""
    argnums = tuple(range(1 + len(args)))
    c = case(name, fn, (state,) + tuple(args), argnums=argnums)
    c["args"] = [encode(a) for a in args]
    c["state"] = encode(state)
    c["argnums"] = list(range(len(args)))
    return c


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures",
                                                       "golden_complex.json"))
    out = parser.parse_args().out

    consts = ("A[i, j] = 0.3 sin(i + 0.7 j + 0.2) + 0.2i cos(0.5 i - j)  (3 x 4)\n"
              "C[i] = cos(0.9 i) - 0.5i sin(0.4 i + 0.3)  (3)\n\n")
    cases = [
        case("cubic", cubic, (Z3,)),
        case("cubic_value", cubic, (Z3,), return_value=True),
        case("cubic_aux", cubic_aux, (Z3,), has_aux=True),
        case("cubic_value_aux", cubic_aux, (Z3,), has_aux=True, return_value=True),
        case("two_poly_01", two_poly, (Z3, W2), argnums=(0, 1)),
        case("two_poly_10", two_poly, (Z3, W2), argnums=(1, 0)),
        case("two_poly_1", two_poly, (Z3, W2), argnums=1),
        case("exp_z_z", exp_z_z, (Z4,)),
        case("matvec_tanh", matvec_tanh, (Z4,), extra_source=consts),
        case("matvec_tanh_az", matvec_tanh_az, (A34, Z4), argnums=(0, 1), extra_source=consts),
        case("nonscalar", nonscalar, (Z3,)),
        case("tuple_output", tuple_output, (Z3,)),
        state_case("state_model", state_model, ZS, (X3,)),
        state_case("state_log", state_log, ZS, (X3,)),
    ]
    doc = {"generator": "tools/golden_complex.py", "jax_version": jax.__version__,
           "cases": cases}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
