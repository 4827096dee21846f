#!/usr/bin/env python3
"""Generate golden Hessians with respect to states for the brainstate-rs test suite.

A small two-layer model keeps its parameters in ``brainstate.ParamState``s

    W1 (3x4), b1 (4), W2 (4x2), b2 (2)
    loss = mean((tanh(X @ W1 + b1) @ W2 + b2 - Y)^2)

with closed-form values (see ``model()``; ``tests/states.rs`` rebuilds the same numbers), and
``brainstate.transform.hessian(loss, grad_states=...)()`` is computed in float64 for

    "dict":         grad_states={"W1": W1, "b1": b1, "W2": W2, "b2": b2}  -> h["a"]["b"]
    "list":         grad_states=[W1, b1, W2, b2]                          -> h[i][j]
    "dict_value":   the dict case with return_value=True                  -> (h, value)

The reference abandoned case 3 (grad_states and argnums raise NotImplementedError), so the mixed
blocks d2 loss / d state d X are taken from plain ``jax.hessian`` over ``(params, X)`` of the
same loss ("joint": {"params_params", "params_x", "x_params", "x_x"}, params as a dict).

Output: ``tests/fixtures/golden_states.json``

    {"generator": "tools/golden_states.py", "jax_version": ..., "brainstate_version": ...,
     "dtype": "float64", "inputs": {"X": tree, "Y": tree},
     "params": {"W1": tree, ...}, "value": tree,
     "hessians": {"dict": tree, "list": tree, "dict_value": tree}, "joint": {...}}

Tree encoding (recursive):
    array (any rank, 0-d included) -> {"shape": [...], "data": [row-major float64 values]}
    list                           -> {"list": [tree, ...]}
    tuple                          -> {"tuple": [tree, ...]}
    dict                           -> {"dict": {key: tree, ...}}   (keys sorted)

Usage:  python tools/golden_states.py [--out PATH]
"""

import argparse
import json
import os

import brainstate  # noqa: I001  (importing brainstate switches JAX to float32: undo below)
import jax

brainstate.environ.set(precision=64)
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

F64 = jnp.float64


def closed_form(shape, fn):
    """An array whose entry at index ``idx`` is ``fn(*idx)`` (float64)."""
    a = np.zeros(shape, dtype=np.float64)
    for idx in np.ndindex(*shape):
        a[idx] = fn(*idx)
    return jnp.asarray(a, dtype=F64)


def model():
    """Parameter values and data; keep in sync with ``model()`` in tests/states.rs."""
    params = {
        "W1": closed_form((3, 4), lambda i, j: 0.3 * np.sin(i + 2 * j + 1)),
        "b1": closed_form((4,), lambda j: 0.1 * np.cos(j + 1)),
        "W2": closed_form((4, 2), lambda i, j: 0.25 * np.cos(2 * i - j + 0.5)),
        "b2": closed_form((2,), lambda j: 0.05 * (j + 1) - 0.1),
    }
    x = closed_form((5, 3), lambda n, i: np.cos(0.7 * n + 0.3 * i))
    y = closed_form((5, 2), lambda n, k: 0.5 * np.sin(n + 2 * k))
    return params, x, y


def loss_of(p, x, y):
    h = jnp.tanh(x @ p["W1"] + p["b1"])
    return jnp.mean((h @ p["W2"] + p["b2"] - y) ** 2)


def encode(tree):
    if isinstance(tree, dict):
        return {"dict": {k: encode(tree[k]) for k in sorted(tree)}}
    if isinstance(tree, list):
        return {"list": [encode(t) for t in tree]}
    if isinstance(tree, tuple):
        return {"tuple": [encode(t) for t in tree]}
    a = np.asarray(tree)
    assert a.dtype == np.float64, f"expected float64, got {a.dtype}"
    return {"shape": list(a.shape), "data": [float(v) for v in a.reshape(-1)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "tests", "fixtures", "golden_states.json")
    parser.add_argument("--out", default=default)
    out = parser.parse_args().out

    values, x, y = model()
    states = {k: brainstate.ParamState(v) for k, v in values.items()}
    for s in states.values():
        assert s.value.dtype == F64, s.value.dtype

    def loss():
        return loss_of({k: s.value for k, s in states.items()}, x, y)

    h_dict = brainstate.transform.hessian(loss, grad_states=states)()
    order = ["W1", "b1", "W2", "b2"]
    h_list = brainstate.transform.hessian(loss, grad_states=[states[k] for k in order])()
    h_value, value = brainstate.transform.hessian(loss, grad_states=states, return_value=True)()
    assert isinstance(h_dict, dict) and isinstance(h_dict["W1"], dict), type(h_dict)
    assert isinstance(h_list, list) and isinstance(h_list[0], list), type(h_list)
    assert np.asarray(value).dtype == np.float64
    assert abs(float(value) - float(loss_of(values, x, y))) < 1e-15

    # Case 3 (states and an argument) from plain JAX: the joint Hessian over (params, X).
    jh = jax.hessian(lambda p, xx: loss_of(p, xx, y), argnums=(0, 1))(values, x)
    # jax.hessian nests (row variable, column variable): jh[0][a] = (d2/dp_a dp, d2/dp_a dX),
    # jh[1] = (d2/dX dp, d2/dX2). Regroup as the 2 x 2 joint blocks.
    joint = {
        "params_params": {a: jh[0][a][0] for a in order},
        "params_x": {a: jh[0][a][1] for a in order},
        "x_params": jh[1][0],
        "x_x": jh[1][1],
    }
    # The reference's state-state blocks agree with plain JAX's.
    for a in order:
        for b in order:
            np.testing.assert_allclose(h_dict[a][b], jh[0][a][0][b], rtol=1e-12, atol=1e-14)

    doc = {
        "generator": "tools/golden_states.py",
        "jax_version": jax.__version__,
        "brainstate_version": brainstate.__version__,
        "dtype": "float64",
        "inputs": {"X": encode(x), "Y": encode(y)},
        "params": {k: encode(values[k]) for k in sorted(values)},
        "value": encode(value),
        "hessians": {
            "dict": encode(h_dict),
            "list": encode(h_list),
            "dict_value": encode(h_value),
        },
        "joint": {k: encode(v) for k, v in joint.items()},
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {out}: loss = {float(value)!r}")


if __name__ == "__main__":
    main()
