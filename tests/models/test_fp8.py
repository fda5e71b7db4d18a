"""FP8 linears (models/fp8.py; Fishman et al. 2024, spec model-variants §5(e)) against float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import base
from models import fp8, transformer

E4M3 = fp8.Format(jnp.dtype(jnp.float8_e4m3fn), 448.0)
E5M2 = fp8.Format(jnp.dtype(jnp.float8_e5m2), 57344.0)


def grid(exp_bits, man_bits, bias, fmax):
    """The non-negative values of an FP8 format, float64, ascending: subnormals k 2^(1-bias-m), then normals."""
    sub = [k * 2.0 ** (1 - bias - man_bits) for k in range(2**man_bits)]
    normal = [(1 + k / 2**man_bits) * 2.0 ** (e - bias) for e in range(1, 2**exp_bits) for k in range(2**man_bits)]
    return np.array([v for v in sub + normal if v <= fmax])


GRIDS = {"e4m3": (E4M3, grid(4, 3, 7, 448.0)), "e5m2": (E5M2, grid(5, 2, 15, 57344.0))}


def ref_round(v, g):
    """Round-to-nearest-even onto grid g (ties to the even grid index = even mantissa), saturating at g[-1]."""
    a = np.minimum(np.abs(v), g[-1])
    hi = np.clip(np.searchsorted(g, a), 1, len(g) - 1)
    lo = hi - 1
    d_lo, d_hi = a - g[lo], g[hi] - a
    pick = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    return np.sign(v) * g[pick]


def test_grids_have_the_formats_extremes():
    for (fmt, g), (tiny, n) in zip(GRIDS.values(), ((2.0**-9, 127), (2.0**-16, 124))):
        assert g[-1] == fmt.fmax and g[1] == tiny and len(g) == n
        assert g[-1] == float(jnp.finfo(fmt.dtype).max)


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_quantize_matches_float64_grid(name):
    fmt, g = GRIDS[name]
    mids = (g[1:] + g[:-1]) / 2  # exact ties, representable in float32
    rng = np.random.default_rng(0)
    rand = np.exp(rng.uniform(np.log(g[1] / 4), np.log(fmt.fmax * 4), 4000))  # subnormals to beyond fmax
    v = np.concatenate([g, mids, rand, -rand, -mids, [0.0, fmt.fmax * 1.01, 1e30, -1e30]]).astype(np.float32)
    got = np.asarray(fp8.qdq(jnp.asarray(v), jnp.float32(1.0), fmt), np.float64)
    np.testing.assert_array_equal(got, ref_round(v.astype(np.float64), g))
    # a pow2 scale is exact: values on the grid / scale come back bit for bit
    on = (g / 8).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(fp8.qdq(jnp.asarray(on), jnp.float32(8.0), fmt)), on)


def test_nan_inf_and_no_saturation():
    v = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 500.0, 1e6], jnp.float32)
    sat4 = np.asarray(fp8.qdq(v, jnp.float32(1.0), E4M3, saturate=True))
    assert np.isnan(sat4[0]) and list(sat4[1:]) == [448.0, -448.0, 448.0, 448.0]
    raw4 = np.asarray(fp8.qdq(v, jnp.float32(1.0), E4M3, saturate=False))
    assert np.isnan(raw4).all()  # e4m3fn has no infinity: every overflow is NaN
    raw5 = np.asarray(fp8.qdq(v, jnp.float32(1.0), E5M2, saturate=False))
    assert np.isnan(raw5[0]) and list(raw5[1:]) == [np.inf, -np.inf, 512.0, np.inf]


def recipe(scaling="delayed", history=3, margin=0.0, pow2=True, e4m3_max=448.0):
    c = base.get_config("tiny").model
    c.fp8.update(enabled=True, scaling=scaling, amax_history=history, margin=margin, pow2_scale=pow2, e4m3_max=e4m3_max)
    return fp8.recipe(c)


def test_delayed_scaling_rolls_the_history_on_a_known_sequence():
    r = recipe(history=3, margin=1.0)
    amaxes = [2.0, 0.5, 8.0, 0.25, 0.1]
    hist, scale = jnp.zeros(3), jnp.ones(())
    past = []
    for a in amaxes:
        t = jnp.array([0.0, -a, a / 3])
        scale, hist = fp8.next_scale(t, hist, scale, E4M3, r)
        ref_amax = max(past[-3:]) if past else a  # step 0: the current amax
        assert float(scale) == 2.0 ** np.floor(np.log2(448.0 / ref_amax / 2.0))
        past.append(a)
        expect = (past[::-1] + [0.0, 0.0])[:3]
        np.testing.assert_array_equal(np.asarray(hist), np.float32(expect))
    r_cur = recipe(scaling="current", pow2=False)
    s, _ = fp8.next_scale(jnp.array([3.0]), jnp.array([100.0, 0, 0]), jnp.ones(()), E4M3, r_cur)
    assert float(s) == pytest.approx(448.0 / 3.0)
    s, _ = fp8.next_scale(jnp.array([jnp.nan]), jnp.zeros(3), jnp.float32(4.0), E4M3, r_cur)
    assert float(s) == 4.0  # a non-finite amax keeps the previous scale


def test_fp8_dot_matches_numpy_reference_forward_and_backward():
    r = recipe(scaling="current")
    x = jax.random.normal(jax.random.key(0), (2, 3, 8, 4)) * 5.0  # [B, T, H, Dh]: two contracted axes
    w = jax.random.normal(jax.random.key(1), (8, 4, 16)) * 0.1
    c = jax.random.normal(jax.random.key(2), (2, 3, 16)) * 1e-3
    p2 = lambda fmt, a: 2.0 ** np.floor(np.log2(fmt.fmax / np.abs(a).max()))  # noqa: E731
    sx, sw = p2(E4M3, x), p2(E4M3, w)

    def loss(x, w, gh, gs):
        y = fp8.fp8_dot(r, 2, jnp.float32, jnp.float32, x, w, jnp.float32(sx), jnp.float32(sw), gh, gs)
        return jnp.sum(y * c), y

    (_, y), (dx, dw, gh, gs) = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(
        x, w, jnp.zeros(3), jnp.ones(())
    )
    x64, w64, c64 = (np.asarray(a, np.float64) for a in (x, w, c))
    qx, qw = ref_round(x64 * sx, GRIDS["e4m3"][1]), ref_round(w64 * sw, GRIDS["e4m3"][1])
    np.testing.assert_allclose(y, np.einsum("bthk,hkf->btf", qx, qw) / (sx * sw), rtol=1e-5, atol=1e-6)
    sg = p2(E5M2, c64)
    qg = ref_round(c64 * sg, GRIDS["e5m2"][1])
    np.testing.assert_allclose(dx, np.einsum("btf,hkf->bthk", qg, qw) / (sg * sw), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(dw, np.einsum("bthk,btf->hkf", qx, qg) / (sg * sx), rtol=1e-5, atol=1e-9)
    # overwrite-with-gradient: the cotangents of the gradient state are its new values
    np.testing.assert_allclose(gh, [np.abs(c64).max(), 0, 0], rtol=1e-7)
    assert float(gs) == sg


def test_apply_meta_grads_replaces_only_the_gradient_entries():
    rest = {"a": {"fp8": {"grad_scale": 1.0, "x_scale": 2.0}}, "u": 3.0}
    grads = {"a": {"fp8": {"grad_scale": 9.0, "x_scale": 0.0}}, "u": 0.0}
    assert fp8.apply_meta_grads(rest, grads) == {"a": {"fp8": {"grad_scale": 9.0, "x_scale": 2.0}}, "u": 3.0}


# ---- a tiny functional train step with the contract of models/fp8.py ---------------------------------------------

def model_cfg(fp8_on, **kw):
    c = base.get_config("tiny").model
    c.update({"dtype": "float32", "d_model": 32, "n_heads": 2, "vocab_size": 64, "mlp": "smooth_swiglu", **kw})
    c.fp8.update(enabled=fp8_on, targets="mlp,attn,head", amax_history=4)
    return c


def make_step(graphdef, lr_scale=1.0):
    tx = optax.adam(3e-3)

    def forward(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        logits, _ = model(batch[:, :-1])
        loss, _ = transformer.lm_loss(logits, batch[:, 1:], 0.0)
        return loss, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

    def step(state, batch, lr):
        (loss, new_rest), (grads, rest_grads) = jax.value_and_grad(forward, argnums=(0, 1), has_aux=True)(
            state["params"], state["rest"], batch
        )
        updates, opt = tx.update(grads, state["opt"])
        params = optax.apply_updates(state["params"], jax.tree.map(lambda u: lr * u, updates))
        return dict(params=params, rest=fp8.apply_meta_grads(new_rest, rest_grads), opt=opt), loss

    return tx, step


def init_state(cfg, seed):
    graphdef, params, rest = nnx.split(transformer.Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    return graphdef, params, nnx.to_pure_dict(rest)


def batches(n, seed=0):
    return jax.random.randint(jax.random.key(seed), (n, 4, 17), 0, 64)


def test_train_step_updates_fp8_state_and_tracks_float32():
    graphdef, params, rest = init_state(model_cfg(True), 0)
    graphdef32, params32, rest32 = init_state(model_cfg(False), 0)
    tx, step = make_step(graphdef)
    _, step32 = make_step(graphdef32)
    state = dict(params=params, rest=rest, opt=tx.init(params))
    state32 = dict(params=params32, rest=rest32, opt=tx.init(params32))
    step, step32 = jax.jit(step), jax.jit(step32)
    losses, losses32 = [], []
    for b in batches(15):
        state, loss = step(state, b, 1.0)
        state32, loss32 = step32(state32, b, 1.0)
        losses.append(float(loss))
        losses32.append(float(loss32))
    assert abs(losses[0] - losses32[0]) < 0.01 * losses32[0]  # same params at step 0: FP8 rounding only
    assert losses[-1] < losses[0] - 0.3  # it learns
    assert abs(losses[-1] - losses32[-1]) < 0.05 * losses32[-1]
    m = state["rest"]["blocks"][0]["mlp"]["w2"]["fp8"]
    for t in ("x", "w", "grad"):
        hist = np.asarray(m[f"{t}_amax_history"])
        assert (hist > 0).all(), (t, hist)  # 15 steps filled the 4-step history
        assert float(m[f"{t}_scale"]) == 2.0 ** np.floor(np.log2((448.0 if t != "grad" else 57344.0) / hist[1:].max()))
    diag = fp8.metrics(nnx.merge(graphdef, state["params"], state["rest"]))
    assert float(diag["fp8_amax/blocks/0/mlp/w2/grad"]) == m["grad_amax_history"][0]
    assert len(diag) == 2 * 3 * (2 * 7 + 1)  # amax and scale of x, w, grad for 7 linears per block and the head


def test_vmapped_step_over_members_equals_per_member_steps():
    members = [init_state(model_cfg(True), s) for s in (0, 1)]
    graphdef = members[0][0]
    tx, step = make_step(graphdef)
    states = [dict(params=p, rest=r, opt=tx.init(p)) for _, p, r in members]
    lrs = jnp.array([1.0, 0.3])
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    vstep = jax.jit(jax.vmap(step, in_axes=(0, None, 0)))
    jstep = jax.jit(step)
    for b in batches(3, seed=1):
        stacked, _ = vstep(stacked, b, lrs)
        states = [jstep(s, b, lr)[0] for s, lr in zip(states, lrs)]
    for i, s in enumerate(states):
        for a, e in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], stacked)), jax.tree.leaves(s)):
            np.testing.assert_allclose(a, e, rtol=2e-5, atol=1e-7)
    assert float(stacked["rest"]["blocks"][0]["mlp"]["w1"]["fp8"]["grad_amax_history"][1, 0]) > 0


def test_composes_with_sigma_reparam_and_refuses_what_it_cannot_do():
    cfg = model_cfg(True, sigma_reparam=True)
    graphdef, params, rest = init_state(cfg, 0)
    tx, step = make_step(graphdef)
    state, loss = jax.jit(step)(dict(params=params, rest=rest, opt=tx.init(params)), batches(1)[0], 1.0)
    assert np.isfinite(float(loss)) and "u" in rest["blocks"][0]["mlp"]["w1"]
    for kw, field in ((dict(attention="mlra"), "model.fp8.targets=attn"), (dict(tie_embeddings=True), "head")):
        with pytest.raises(ValueError, match=field):
            transformer.Transformer(model_cfg(True, **kw), rngs=nnx.Rngs(0))
    bad = model_cfg(True)
    bad.fp8.targets = "mlp,embed"
    with pytest.raises(ValueError, match="model.fp8.targets"):
        transformer.Transformer(bad, rngs=nnx.Rngs(0))


# ---- diagnostics: the saturated fraction per quantized tensor (models/probes.py capture_metrics) -----------------

def test_saturation_metrics_against_numpy_with_outgrown_amax_histories():
    """Delayed scaling whose histories hold 1/8, 1/4 and 1/16 of this step's amax: the fractions of x, W and g
    that saturate (|t·s| >= fmax) equal numpy's, g being d loss / d y of the FP8 output; a plain forward outside
    the diagnostic capture leaves no trace in the module's state."""
    from models import layers, probes

    c = base.get_config("tiny").model
    c.update(dtype="float32")
    c.fp8.update(enabled=True, targets="mlp", amax_history=2)
    lin = layers.make_linear(c, (16,), (8,), ("embed", "mlp"), init=jax.nn.initializers.normal(1.0),
                             rngs=nnx.Rngs(0), fp8_target="mlp")
    x = jax.random.normal(jax.random.key(0), (4, 16)) * jnp.linspace(0.1, 3.0, 16)
    cot = jax.random.normal(jax.random.key(1), (4, 8)) ** 3
    w = lin.kernel[...]
    amax = lambda a: float(np.abs(np.asarray(a, np.float64)).max())  # noqa: E731
    lin.fp8.x_amax_history[...] = jnp.array([amax(x) / 8, 0.0])
    lin.fp8.w_amax_history[...] = jnp.array([0.0, amax(w) / 4])
    lin.fp8.grad_amax_history[...] = jnp.array([amax(cot) / 16, amax(cot) / 32])
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(lin)))
    got = probes.capture_metrics(lambda m: jnp.sum(m.lin(x) * cot), nnx.Dict(lin=lin))
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(lin)))
    jax.tree.map(np.testing.assert_array_equal, before, after)  # the probe does not change the model

    def frac(t, hist_amax, fmax):
        s = 2.0 ** np.floor(np.log2(fmax / hist_amax))
        return np.mean(np.abs(np.asarray(t, np.float64)) * s >= fmax)

    want = {"x": frac(x, amax(x) / 8, 448.0), "w": frac(w, amax(w) / 4, 448.0),
            "grad": frac(cot, amax(cot) / 16, 57344.0)}
    assert set(got) == {f"fp8_saturated/lin/{t}" for t in want}
    for t, v in want.items():
        assert 0 < v < 1 and float(got[f"fp8_saturated/lin/{t}"]) == pytest.approx(v, abs=1e-7), t
    lin(x)
    assert not jax.tree.leaves(nnx.state(lin, nnx.Intermediate))
    assert not jax.tree.leaves(nnx.state(lin, nnx.Perturbation))
    c.fp8.scaling = "current"  # scales from the tensor itself never saturate (pow2 rounds the scale down)
    lin_cur = layers.make_linear(c, (16,), (8,), ("embed", "mlp"), init=jax.nn.initializers.normal(1.0),
                                 rngs=nnx.Rngs(0), fp8_target="mlp")
    cur = probes.capture_metrics(lambda m: jnp.sum(m.lin(x) * cot), nnx.Dict(lin=lin_cur))
    assert all(float(v) == 0.0 for v in cur.values()) and len(cur) == 3
