#!/usr/bin/env python3
"""Generate golden unit-aware derivatives for `tests/units.rs`.

Every case is computed by the reference, `brainstate.transform.{hessian,grad,jacrev,jacfwd}`
with `unit_aware=True` (brainstate 0.5.x over brainunit/saiunit), in float64, and written to
``tests/fixtures/golden_units.json``:

    {"generator": "tools/golden_units.py", "brainstate_version": "...", "cases": {name: tree}}

Tree encoding (recursive):
    leaf  -> {"shape": [...], "si": [row-major values in SI base units],
              "dims": [m, kg, s, A, K, mol, cd exponents], "quantity": bool}
             ("quantity" is false for a plain array, which brainunit returns for a
             dimensionless result)
    tuple/list -> {"seq": [tree, ...]}
    dict       -> {"dict": {key: tree, ...}}

The Rust tests compare each leaf's values in the SI unit of `dims` and check that the block
carries a unit of that dimension (or none when `quantity` is false).

Usage:  python tools/golden_units.py [--out PATH]
"""

import argparse
import json
import os

import jax

jax.config.update("jax_enable_x64", True)

import brainstate  # noqa: E402
import brainunit as u  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

brainstate.environ.set(precision=64)
T = brainstate.transform


def encode(x):
    if isinstance(x, dict):
        return {"dict": {k: encode(v) for k, v in sorted(x.items())}}
    if isinstance(x, (tuple, list)):
        return {"seq": [encode(v) for v in x]}
    if isinstance(x, u.Quantity):
        dims = [int(d) for d in np.asarray(x.dim._dims)]
        si = np.asarray(x.to_decimal(_si_unit(x)))
        return {"shape": list(si.shape), "si": si.reshape(-1).tolist(), "dims": dims, "quantity": True}
    a = np.asarray(x, dtype=np.float64)
    return {"shape": list(a.shape), "si": a.reshape(-1).tolist(), "dims": [0] * 7, "quantity": False}


BASES = [u.meter, u.kilogram, u.second, u.amp, u.kelvin, u.mole, u.candle]


def _si_unit(q):
    """The coherent SI unit of q's dimension."""
    unit = u.Unit()  # dimensionless
    for base, d in zip(BASES, np.asarray(q.dim._dims)):
        if int(d) != 0:
            unit = unit * base ** int(d)
    return unit


def cases():
    out = {}
    ms = u.ms

    # saiunit's docstring / test cases, through brainstate.transform.hessian(unit_aware=True).
    def doc_unitless(x):
        return x ** 2 + 3 * x * ms + 2 * ms * ms

    out["doc_unitless"] = T.hessian(doc_unitless, unit_aware=True)(jnp.array(1.0) * ms)

    def doc_cubic(x):
        return x ** 3 + 3 * x * u.msecond2 + 2 * u.msecond3

    out["doc_cubic"] = T.hessian(doc_cubic, unit_aware=True)(jnp.array(1.0) * ms)

    # brainstate's own test: transform/_grad_grad_test.py::TestUnitAwareGrad::test_hessian.
    def brainstate_test_hessian(x):
        return x ** 3 + 3 * x * ms * ms + 2 * ms * ms * ms

    out["brainstate_test_hessian"] = T.hessian(brainstate_test_hessian, unit_aware=True)(
        jnp.array(1.0) * ms
    )
    # The same function summed over a vector.
    out["brainstate_test_hessian_vector"] = T.hessian(
        lambda x: u.math.sum(brainstate_test_hessian(x)), unit_aware=True
    )(jnp.array([0.5, 1.0, 2.0]) * ms)

    def dict_function(x):
        return {"z": x["a"] ** 3 + x["b"] ** 3}

    out["dict"] = T.hessian(dict_function, unit_aware=True)(
        {"a": jnp.array(1.0) * ms, "b": jnp.array(2.0) * ms}
    )

    def dict_mixed(x):
        return u.math.sum(x["a"] ** 2 * x["b"])

    out["dict_mixed"] = T.hessian(dict_mixed, unit_aware=True)(
        {"a": jnp.array([1.0, 2.0]) * ms, "b": jnp.array(3.0) * u.mV}
    )

    def multi(x, y):
        return x ** 2 + y ** 2

    out["multi_args"] = T.hessian(multi, argnums=(0, 1), unit_aware=True)(
        jnp.array(1.0) * ms, jnp.array(2.0) * ms
    )

    def multi_mixed(x, y):
        return u.math.sum(x ** 2 * y)

    out["multi_args_mixed"] = T.hessian(multi_mixed, argnums=(0, 1), unit_aware=True)(
        jnp.array([1.0, 2.0]) * ms, jnp.array(3.0) * u.mV
    )

    def quadratic_form(x):
        A = jnp.array([[2.0, 1.0], [1.0, 3.0]]) * ms
        return 0.5 * x.T @ A @ x

    out["quadratic_form"] = T.hessian(quadratic_form, unit_aware=True)(jnp.array([1.0, 1.0]) * ms)

    out["quartic_seconds"] = T.hessian(lambda x: x ** 4, unit_aware=True)(jnp.array(2.0) * u.second)

    def scale_folded(x, y):
        return (x + y) ** 2

    out["scale_folded"] = T.hessian(scale_folded, argnums=(0, 1), unit_aware=True)(
        jnp.array(3.0) * ms, jnp.array(0.5) * u.second
    )

    # A neuron-model loss over states in mV and nS, with the reversal potential an argument.
    v = brainstate.State(jnp.array([-65.0, -50.0]) * u.mV)
    g = brainstate.State(jnp.array([2.0, 3.0]) * u.nS)
    E = jnp.array(-70.0) * u.mV

    def loss(E):
        return u.math.sum(((v.value - E) * g.value) ** 2)

    out["neuron_states"] = T.hessian(loss, grad_states={"g": g, "v": v}, unit_aware=True)(E)

    def loss_all(v, g, E):
        return u.math.sum(((v - E) * g) ** 2)

    out["neuron_joint"] = T.hessian(loss_all, argnums=(0, 1, 2), unit_aware=True)(
        v.value, g.value, E
    )

    # First-order: brainstate's TestUnitAwareGrad cases.
    x = jnp.array([1.0, 2.0, 3.0]) * ms
    out["grad1"] = T.grad(lambda x: u.math.sum(x ** 2), unit_aware=True)(x)

    def jac_f(x, y):
        return u.math.asarray([x[0] * y[0], 5 * x[2] * y[1], 4 * x[1] ** 2])

    _x = jnp.array([1.0, 2.0, 3.0]) * ms
    _y = jnp.array([10.0, 5.0]) * ms
    out["jacrev1"] = T.jacrev(jac_f, unit_aware=True, argnums=(0, 1))(_x, _y)
    out["jacfwd1"] = T.jacfwd(jac_f, unit_aware=True, argnums=(0, 1))(_x, _y)
    out["grad_neuron"] = T.grad(loss, grad_states={"g": g, "v": v}, unit_aware=True)(E)
    return out


def main():
    p = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "golden_units.json"))
    args = p.parse_args()
    data = {
        "generator": "tools/golden_units.py",
        "brainstate_version": brainstate.__version__,
        "cases": {k: encode(v) for k, v in cases().items()},
    }
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
