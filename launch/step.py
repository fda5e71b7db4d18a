"""The program of a run (DESIGN §4): the model graph, shardings and the pure train/eval/diagnose functions, and
their compiled form over a group of M >= 1 members.

`build_program(cfg, mesh)` splits the model with `nnx.split` into (graphdef, params, rest); a member's train state
is a plain dict {params, rest, opt_state, step, initial_loss, data_offset, alive} (plus `spike_detector` with
train.rewind). `train_step(state, batch, hparams)` is a pure function. Optimizer scalars (lr, weight decay, ...)
are traced arguments and the seed is an argument of `init`, so runs that differ only in them share one compiled
program.

`compile_group(prog, m, shared_batch)` jits those functions over a member axis of size m: every array of a group
state has the member axis first. For m > 1 the functions are `jax.vmap`ped over (state, hparams) and, when the
members differ in seed, the batch; for m = 1 they index the member and stack the result inside the jitted
function (free reshapes), so a single run compiles the plain, unbatched step. The member axis is sharded over the
`data` mesh axis when m is a multiple of its size.

Names: M members, B batch rows, S = seq_len + 1 tokens per row, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import optim
from launch import faults, mesh as mesh_lib
from models import fp8, mlp, probes, transformer
from optim import agg as agg_lib


def hparams_array(cfg) -> dict:
    """The traced optimizer scalars (`optim.HPARAM_KEYS`) of a config, float32 scalars."""
    return {k: jnp.asarray(v, jnp.float32) for k, v in optim.hparams_from_config(cfg.optim).items()}


def divergence_threshold(cfg, initial_loss):
    """The training-CE threshold of the early-stopping option `train.divergence_margin` (> 0: ℓ0 + margin), or
    +inf when it is off (the default: only a non-finite loss diverges, as in Wortsman et al.)."""
    margin = float(cfg.train.divergence_margin)
    return initial_loss + margin if margin > 0 else initial_loss * 0 + np.inf


def diverged(loss, ce, threshold):
    """The divergence rule (DESIGN §8), elementwise: a non-finite loss, or training CE above `threshold`.

    Used inside the step (to freeze a member) and on the host by `records.RunRecord`, so both agree step for step.
    """
    return jnp.logical_or(~jnp.isfinite(loss), jnp.asarray(ce) > threshold)  # compared in float32 on both sides


def spike_detector(rewind_cfg) -> optax.GradientTransformationExtraArgs:
    """The CE-spike test of the PaLM-style rewind (`train.rewind`; spec optimizers §10(a)): the statistic of
    `optim.skip_step`, shared rather than re-derived, so both agree on what a spike is. A step's CE spikes when it
    exceeds mean + sigma·std (Bessel) of the previous `window` CEs, armed once max(2, window // 2) values are known
    (OLMo-core's warm-up rule); a non-finite CE of an armed test spikes too. The wrapped transform is the identity
    and its gradient tree is empty, whose norm (0) never spikes, so the state's `skipped` flag is the CE test alone.
    Its state lives in the train state, so a checkpoint holds the history of the steps before it: resume is exact.
    """
    return optim.skip_step(optax.identity(), rewind_cfg.window, rewind_cfg.sigma)


@dataclasses.dataclass(frozen=True)
class Program:
    """Everything static about one member's run: the model graph, shardings, and the pure step functions."""

    cfg: object
    graphdef: nnx.GraphDef
    mesh: jax.sharding.Mesh
    state_shardings: dict
    init: Callable  # (seed int32[]) -> state
    train_step: Callable  # (state, batch_BxS, hparams) -> (state, metrics)
    eval_step: Callable  # (state, batch_BxS) -> ce
    eval_buckets: Callable  # (state, batch_BxS, bucket_ids_NxV) -> (ce sums, target counts), float32[N, K] each
    diagnose: Callable  # (state, batch_BxS, hparams) -> diagnostics dict

    def abstract_state(self):
        """Shapes, dtypes and shardings of a member's train state: the target that restores a checkpoint."""
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            jax.eval_shape(self.init, jnp.int32(0)),
            self.state_shardings,
        )


def build_program(cfg, mesh: jax.sharding.Mesh) -> Program:
    """Builds the abstract model and the pure step functions for `cfg` on `mesh` (no compilation yet)."""
    total_steps = int(cfg.train.steps)
    model_cfg = cfg.model

    def new_model(seed):
        return transformer.Transformer(model_cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))

    graphdef, abs_params, abs_rest = nnx.split(nnx.eval_shape(lambda: new_model(0)), nnx.Param, ...)
    param_shardings = mesh_lib.named(mesh, mesh_lib.state_specs(abs_params, mesh))
    rest_shardings = mesh_lib.named(mesh, mesh_lib.state_specs(abs_rest, mesh))
    lr_multipliers = transformer.mup_lr_multipliers(model_cfg, nnx.to_pure_dict(abs_params))  # model.mup; or None
    post_update = transformer.post_update(model_cfg)  # model.qk_clip's rescale after the update; or None
    tx0 = optim.make_optimizer(cfg.optim, total_steps, lr_multipliers=lr_multipliers)
    abs_opt = jax.eval_shape(tx0.init, nnx.to_pure_dict(abs_params))
    replicated = NamedSharding(mesh, P())
    masked = lambda x: isinstance(x, optax.MaskedNode)  # a leaf another part of optax.partition owns (optim.muon)
    opt_shardings = optax.tree_map_params(
        tx0, lambda x, s: x if masked(x) else s, abs_opt, param_shardings, transform_non_params=lambda _: replicated,
        is_leaf=masked,
    )
    rewind = cfg.train.rewind.enabled
    detector = spike_detector(cfg.train.rewind) if rewind else None
    state_shardings = dict(
        params=param_shardings, rest=rest_shardings, opt_state=opt_shardings, step=replicated, initial_loss=replicated,
        data_offset=replicated, alive=replicated,
    )
    if rewind:
        state_shardings["spike_detector"] = jax.tree.map(lambda _: replicated, jax.eval_shape(detector.init, ()))
    o = cfg.optim  # AGG (optim/agg.py): its target counts live in the train state, like the spike detector's history
    agg = agg_lib.agg_counts(model_cfg.vocab_size, o.agg_window, o.agg_alpha) if o.agg else None
    if agg:
        state_shardings["agg"] = jax.tree.map(lambda _: replicated, jax.eval_shape(agg.init, ()))

    def init(seed):
        _, params, rest = nnx.split(new_model(seed), nnx.Param, ...)
        params = nnx.to_pure_dict(params)
        state = dict(
            params=params,
            rest=nnx.to_pure_dict(rest),
            opt_state=tx0.init(params),
            step=jnp.zeros([], jnp.int32),
            initial_loss=jnp.full([], jnp.nan, jnp.float32),
            data_offset=jnp.zeros([], jnp.int32),
            alive=jnp.ones([], bool),
        )
        state = dict(state, agg=agg.init(())) if agg else state
        return dict(state, spike_detector=detector.init(())) if rewind else state

    def forward(params, rest, batch_BxS, diagnostics: bool, head_gate=None):
        model = nnx.merge(graphdef, params, rest)
        loss, aux, diag = model.loss(batch_BxS[:, :-1], batch_BxS[:, 1:], cfg.loss.z_loss, diagnostics, head_gate)
        new_rest = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
        return loss, (aux, diag, new_rest)

    # also differentiated w.r.t. `rest`: the FP8 gradient scales come out of the backward as their cotangents
    # ("overwrite with gradient", models/fp8.py); no other leaf of `rest` reaches the optimizer
    grad_fn = jax.value_and_grad(forward, argnums=(0, 1), has_aux=True)
    fault = faults.nonfinite("loss") or faults.nonfinite("grads")  # a testing aid; None (no-op) in real runs

    def gradients(state, batch_BxS, hparams):
        gate = agg_lib.head_gate(state["agg"], batch_BxS[:, 1:], o.agg_alpha, o.agg_window) if agg else None
        (loss, (aux, stats, new_rest)), (grads, rest_grads) = grad_fn(
            state["params"], state["rest"], batch_BxS, False, gate
        )
        new_rest = fp8.apply_meta_grads(new_rest, rest_grads)
        if cfg.train.spike_at_step:  # injected spike (base.py): the gradient of spike_scale · loss on that batch
            batch_num = state["step"] + state["data_offset"] + 1
            spike = jnp.where(batch_num == cfg.train.spike_at_step, cfg.train.spike_scale, 1.0)
            grads = jax.tree.map(lambda g: g * spike.astype(g.dtype), grads)
        if fault is not None:  # an injected non-finite loss or gradient at that data position (launch/faults.py)
            scale = jnp.where(state["step"] + state["data_offset"] + 1 == fault.step, fault.value, 1.0)
            if fault.target == "loss":
                loss = loss * scale.astype(loss.dtype)
            else:
                grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        tx = optim.make_optimizer(cfg.optim, total_steps, hparams, lr_multipliers)
        # skip_step judges the unscaled CE and the (possibly spiked) gradient norm (spec optimizers §10)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"], loss=aux["ce"])
        return loss, aux, new_rest, grads, updates, opt_state, stats

    def train_step(state, batch_BxS, hparams):
        loss, aux, new_rest, grads, updates, opt_state, stats = gradients(state, batch_BxS, hparams)
        step_metrics = dict(
            loss=loss,
            grad_norm=optax.global_norm(grads),
            lr=optim.make_schedule(cfg.optim, total_steps, hparams)(state["step"]),
            **aux,
            **optim.state_metrics(opt_state),
        )
        alive = state["alive"] & ~diverged(loss, aux["ce"], divergence_threshold(cfg, state["initial_loss"]))
        params = optax.apply_updates(state["params"], updates)
        if post_update is not None:  # the model's own step on the new params, from this step's forward (stats)
            params, post_metrics = post_update(params, stats)
            step_metrics.update(post_metrics)
        new_state = dict(
            state, params=params, rest=new_rest, opt_state=opt_state, step=state["step"] + 1, alive=alive,
        )
        if rewind:  # the rewind's spike test on this step's CE (the data offset passes through untouched)
            _, test = detector.update((), state["spike_detector"], loss=aux["ce"])
            new_state["spike_detector"] = test
            step_metrics.update(spike=test.skipped, spike_ce_z=test.loss_z)
        if agg:  # commit this update's target counts (the gates above included them)
            _, new_state["agg"] = agg.update((), state["agg"], targets=batch_BxS[:, 1:])
            step_metrics.update(optim.state_metrics(new_state["agg"]))
        return new_state, step_metrics

    def eval_step(state, batch_BxS):
        _, (aux, _, _) = forward(state["params"], state["rest"], batch_BxS, False)
        return aux["ce"]

    def eval_buckets(state, batch_BxS, bucket_ids_NxV):
        """Eval CE summed per token-frequency bucket and the number of targets per bucket, float32[N, K] each, for
        N tables int32[N, V] of each target id's bucket (`evaluation.frequency_buckets`) and K = train.freq_buckets
        (spec optimizers §2(a)). Accumulated over an eval pass, sums / counts is the token-weighted mean CE."""
        model = nnx.merge(graphdef, state["params"], state["rest"])
        logits_BxTxV, _ = model(batch_BxS[:, :-1], False)
        ce_M = transformer.token_ce(logits_BxTxV, batch_BxS[:, 1:])[0].reshape(-1)
        ids_NxM = bucket_ids_NxV[:, batch_BxS[:, 1:].reshape(-1)]
        per_bucket = jax.vmap(lambda ids, x: jnp.zeros(cfg.train.freq_buckets, jnp.float32).at[ids].add(x), (0, None))
        return per_bucket(ids_NxM, ce_M), per_bucket(ids_NxM, 1.0)

    def diagnose(state, batch_BxS, hparams):
        """DESIGN §5 diagnostics on one batch, without changing the state (the run's trajectory is unaffected).

        Gradients, updates and Adam's attenuation come from the step's own (fused) path on the whole batch; the
        attention and output-logit diagnostics from one forward pass without gradients through the explicit
        float32 attention on the first `train.diag_rows` rows (0 = all): that pass holds one layer's
        B·H·T·T attention weights at a time, where a differentiated one would keep every layer's.
        Metric names: README "Diagnostics" (`models.probes.diagnostic_names` lists a config's).
        """
        rows = cfg.train.diag_rows or batch_BxS.shape[0]
        _, _, _, grads, updates, opt_state, _ = gradients(state, batch_BxS, hparams)
        _, (aux, diag, rest) = forward(state["params"], state["rest"], batch_BxS[:rows], True)
        model = nnx.merge(graphdef, state["params"], rest)  # this forward's σReparam estimates; never kept
        out = {k: v for k, v in aux.items() if k not in ("ce", "z_loss")}
        out.update(diag)
        out.update(probes.embedding_metrics(model, batch_BxS[:, :-1]))
        out.update(probes.sigma_reparam_metrics(model))
        out.update(fp8.metrics(model))
        out.update(mlp.swiglu_alignment_metrics(model))
        out.update(probes.capture_metrics(  # FP8 saturation and SwiGLU max |h|: a captured fwd + bwd on the whole batch
            lambda m: transformer.lm_loss(m(batch_BxS[:, :-1])[0], batch_BxS[:, 1:], cfg.loss.z_loss)[0],
            nnx.merge(graphdef, state["params"], state["rest"]),
        ))
        out.update(probes.spectral_alignment_metrics(model, batch_BxS[:rows, :-1]))  # own forward, so last
        out.update(probes.per_tensor_rms(state["params"], "param_rms"))
        out.update(probes.per_tensor_rms(grads, "grad_rms"))
        out.update(probes.per_tensor_rms(updates, "update_rms"))
        out.update(optim.adam_attenuation(opt_state, hparams["eps"], hparams["b1"], hparams["b2"]))
        return out

    return Program(cfg, graphdef, mesh, state_shardings, init, train_step, eval_step, eval_buckets, diagnose)


# ---------------------------------------------------------------------------------------------------------------
# The compiled group: the program's functions over M members.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Group:
    """The jitted functions of a group of `m` members; every state and hparams leaf has the member axis first.

    A batch is int32[B, S] when the members share their data (`shared_batch`) and int32[M, B, S] otherwise.
    """

    prog: Program
    m: int
    shared_batch: bool
    state_shardings: dict  # of a member-stacked state
    member_sharding: NamedSharding  # of a [m, ...] array
    batch_sharding: NamedSharding
    init: Callable  # seeds int32[M] -> states_M (initial_loss not yet measured)
    step: Callable  # (states_M, batch, hparams_M) -> (states_M, metrics_M); donates states_M
    evaluate: Callable  # (states_M, batch) -> ce float32[M]
    eval_buckets: Callable  # (states_M, batch, bucket_ids_NxV) -> (sums, counts), float32[M, N, K] each
    diagnose: Callable  # (states_M, batch, hparams_M) -> diagnostics, leading member axis
    set_initial_loss: Callable  # (states_M, initial_loss float32[M]) -> states_M
    freeze: Callable  # (states_M, alive bool[M]) -> states_M whose members not in `alive` stop changing
    member: Callable  # (states_M, i) -> one member's state, placed as `prog.state_shardings`
    stack: Callable  # one member's state -> states_M with m = 1

    def abstract_state(self):
        """Shapes, dtypes and shardings of the member-stacked state (a group checkpoint's restore target)."""
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct((self.m, *a.shape), a.dtype, sharding=s),
            self.prog.abstract_state(),
            self.state_shardings,
        )


def _over_members(fn, m: int, in_axes):
    """`fn` over a leading member axis: jax.vmap for m > 1; for m = 1 index member 0 and restack the outputs, so
    the compiled single run is the plain function."""
    if m > 1:
        return jax.vmap(fn, in_axes=in_axes)

    def single(*args):
        take = [a if ax is None else jax.tree.map(lambda x: x[0], a) for a, ax in zip(args, in_axes)]
        return jax.tree.map(lambda x: x[None], fn(*take))

    return single


def compile_group(prog: Program, m: int, shared_batch: bool = True) -> Group:
    """jits `prog`'s functions over `m` members with explicit shardings; the train step donates the state."""
    mesh = prog.mesh
    member_spec, batch_spec = mesh_lib.group_specs(mesh, m, shared_batch)  # the member axis over RULES["members"]
    states = jax.tree.map(lambda s: NamedSharding(mesh, P(*member_spec, *s.spec)), prog.state_shardings)
    member = NamedSharding(mesh, member_spec)
    batch = NamedSharding(mesh, batch_spec)
    replicated = NamedSharding(mesh, P())
    b_ax = None if shared_batch else 0

    def step(states_M, batch, hparams_M):
        new_M, metrics_M = _over_members(prog.train_step, m, (0, b_ax, 0))(states_M, batch, hparams_M)
        if m > 1:  # a member that diverged keeps its last finite state; the others go on
            alive_M = new_M["alive"]

            def keep(new, old):
                return jnp.where(alive_M.reshape(alive_M.shape + (1,) * (new.ndim - 1)), new, old)

            new_M = dict(jax.tree.map(keep, new_M, states_M), alive=alive_M)
        return new_M, metrics_M

    return Group(
        prog=prog,
        m=m,
        shared_batch=shared_batch,
        state_shardings=states,
        member_sharding=member,
        batch_sharding=batch,
        init=jax.jit(_over_members(prog.init, m, (0,)), in_shardings=member, out_shardings=states),
        # what the host reads (metrics, eval losses, diagnostics: a few scalars per member) comes back replicated,
        # so every process can read it whichever processes hold the members
        step=jax.jit(step, in_shardings=(states, batch, member), out_shardings=(states, replicated), donate_argnums=(0,)),
        evaluate=jax.jit(
            _over_members(prog.eval_step, m, (0, b_ax)), in_shardings=(states, batch), out_shardings=replicated
        ),
        eval_buckets=jax.jit(
            _over_members(prog.eval_buckets, m, (0, b_ax, None)),
            in_shardings=(states, batch, replicated),
            out_shardings=(replicated, replicated),
        ),
        diagnose=jax.jit(
            _over_members(prog.diagnose, m, (0, b_ax, 0)), in_shardings=(states, batch, member), out_shardings=replicated
        ),
        set_initial_loss=jax.jit(
            lambda s, x: dict(s, initial_loss=x), in_shardings=(states, member), out_shardings=states, donate_argnums=(0,)
        ),
        freeze=jax.jit(
            lambda s, a: dict(s, alive=s["alive"] & a), in_shardings=(states, member), out_shardings=states,
            donate_argnums=(0,),
        ),
        member=jax.jit(lambda s, i: jax.tree.map(lambda x: x[i], s), out_shardings=prog.state_shardings),
        stack=jax.jit(lambda s: jax.tree.map(lambda x: x[None], s), out_shardings=states),
    )


def stacked_hparams(group: Group, cfgs) -> dict:
    """The members' optimizer scalars as float32[M] arrays on the member sharding."""
    return jax.device_put(jax.tree.map(lambda *h: np.stack(h), *[hparams_array(c) for c in cfgs]), group.member_sharding)

