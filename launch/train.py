"""`python -m launch.train --config=experiments/base.py:tiny --workdir=runs/a [--config.x.y=v ...]`: one run.

The functional core (DESIGN §4): `nnx.split` turns the model into (graphdef, params, rest); the train state is a
plain dict {params, rest, opt_state, step, initial_loss, data_offset} (plus `spike_detector` with train.rewind:
the CE history of the spike test); `train_step(state, batch, hparams)` is a pure function,
jitted with explicit shardings from launch/mesh.py and donated buffers. Optimizer scalars (lr, weight decay, ...)
are traced arguments, so runs that differ only in them reuse one compiled program, and the batched sweep
executor can vmap the same function over them.

The run directory (DESIGN §3): config.json, metrics.jsonl, summary.json, tb/, checkpoints/ (and decayed/ for
WSD-S, spec optimizers §3). Re-running the same command resumes from the newest checkpoint and ends bitwise
equal to an uninterrupted run (on CPU). A diverged run (non-finite loss, or training CE above initial_loss +
train.divergence_margin) stops, writes `diverged: true` and `diverged_at_step` to summary.json, and exits 0.
With train.rewind, a CE spike first rewinds the run to an earlier checkpoint and skips ahead in the data (PaLM;
spec optimizers §10(a); `train`). launch/branch.py forks WSD decays from a run's checkpoints (`start_from`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optim
from launch import checkpoint, cli, configs, data, mesh as mesh_lib, metrics as metrics_lib
from models import layers, transformer


# ---------------------------------------------------------------------------------------------------------------
# The functional core: state construction, train step, eval step, diagnostics.
# ---------------------------------------------------------------------------------------------------------------


def rms(x) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def per_tensor_rms(tree, prefix: str) -> dict:
    return {f"{prefix}/{_path_name(p)}": rms(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@dataclasses.dataclass(frozen=True)
class Program:
    """Everything static about a run: the model graph, shardings, and the pure step functions."""

    cfg: object
    graphdef: nnx.GraphDef
    mesh: jax.sharding.Mesh
    state_shardings: dict
    init: Callable  # () -> state
    train_step: Callable  # (state, batch, hparams) -> (state, metrics)   pure, unjitted
    eval_step: Callable  # (state, batch) -> ce
    eval_buckets: Callable  # (state, batch, bucket_ids_NxV) -> (ce sums, target counts), float32[N, train.freq_buckets]
    diagnose: Callable  # (state, batch, hparams) -> diagnostics dict

    def abstract_state(self):
        """Shapes, dtypes and shardings of the train state: the target that restores a checkpoint onto the mesh."""
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), jax.eval_shape(self.init), self.state_shardings
        )


def restore_newest(prog: Program, workdir: Path) -> tuple[int | None, dict | None]:
    """(step, train state) of the newest readable checkpoint of the run in `workdir`, or (None, None)."""
    ckpt = checkpoint.Checkpointer(Path(workdir) / "checkpoints", keep=prog.cfg.train.keep_ckpts)
    try:
        return ckpt.restore_latest(prog.abstract_state())
    finally:
        ckpt.close()


def adam_attenuation(opt_state, eps, b1, b2) -> dict:
    """Adam's ε attenuation per tensor, RMS(m̂/(√v̂+ε)) / RMS(m̂/√v̂) (Wortsman et al. 2023 §3.4; spec optimizers
    §4(a)), from every `optax.ScaleByAdamState` in `opt_state` (optim.adam's state; SPAM's differs and is skipped).
    m̂, v̂ are bias-corrected with the state's count. 1 means no attenuation; r/(r+ε) for a constant gradient r.
    Entries with v̂ = 0 count as 0 in both RMS; a tensor with none left reports 1."""
    out = {}
    for _, s in optax.tree_utils.tree_get_all_with_path(opt_state, "ScaleByAdamState"):
        k = s.count.astype(jnp.float32)
        r1, r2 = 1.0 / (1.0 - b1**k), 1.0 / (1.0 - b2**k)

        def ratio(m, v):
            m_hat, sqrt_v = m.astype(jnp.float32) * r1, jnp.sqrt(v.astype(jnp.float32) * r2)
            den = rms(jnp.where(sqrt_v > 0, m_hat / jnp.where(sqrt_v > 0, sqrt_v, 1.0), 0.0))
            return jnp.where(den > 0, rms(m_hat / (sqrt_v + eps)) / jnp.where(den > 0, den, 1.0), 1.0)

        flat_mu = jax.tree_util.tree_flatten_with_path(s.mu)[0]
        for (path, m), v in zip(flat_mu, jax.tree.leaves(s.nu)):
            out[f"adam_attenuation/{_path_name(path)}"] = ratio(m, v)
    return out


def embedding_metrics(model, batch_BxS) -> dict:
    """TEV of the input embedding table (Chung et al. 2024; spec §2(a)): over all rows, and over the rows of the
    tokens in the diagnosed batch (a subset of the tokens seen in training: never-seen rows stay near their init)."""
    table_VxD = model.embed.embedding[...]
    seen_V = jnp.zeros(table_VxD.shape[0], bool).at[batch_BxS.reshape(-1)].set(True)
    (mu, sigma), (mu_b, sigma_b) = layers.tev(table_VxD), layers.tev(table_VxD, seen_V)
    return {"tev_mu": mu, "tev_sigma": sigma, "tev_batch_mu": mu_b, "tev_batch_sigma": sigma_b}


def spike_detector(rewind_cfg) -> optax.GradientTransformationExtraArgs:
    """The CE-spike test of the PaLM-style rewind (`train.rewind`; spec optimizers §10(a)): the statistic of
    `optim.skip_step`, shared rather than re-derived, so both agree on what a spike is. A step's CE spikes when it
    exceeds mean + sigma·std (Bessel) of the previous `window` CEs, armed once max(2, window // 2) values are known
    (OLMo-core's warm-up rule); a non-finite CE of an armed test spikes too. The wrapped transform is the identity
    and its gradient tree is empty, whose norm (0) never spikes, so the state's `skipped` flag is the CE test alone.

    `update((), state, loss=ce)` appends `ce` to the history; the state (ring buffer, count, flag, z-score) lives in
    the train state, so a checkpoint holds the history of the steps before it and resume is exact.
    """
    return optim.skip_step(optax.identity(), rewind_cfg.window, rewind_cfg.sigma)


def build_program(cfg, mesh: jax.sharding.Mesh) -> Program:
    """Builds the abstract model and the pure step functions for `cfg` on `mesh` (no compilation yet)."""
    total_steps = int(cfg.train.steps)
    model_cfg = cfg.model

    def new_model():
        return transformer.Transformer(model_cfg, rngs=nnx.Rngs(params=cfg.train.seed))

    abstract_model = nnx.eval_shape(new_model)
    graphdef, abs_params, abs_rest = nnx.split(abstract_model, nnx.Param, ...)
    param_shardings = mesh_lib.named(mesh, mesh_lib.state_specs(abs_params, mesh))
    rest_shardings = mesh_lib.named(mesh, mesh_lib.state_specs(abs_rest, mesh))
    tx0 = optim.make_optimizer(cfg.optim, total_steps)
    abs_opt = jax.eval_shape(tx0.init, nnx.to_pure_dict(abs_params))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_shardings = optax.tree_map_params(
        tx0, lambda _, s: s, abs_opt, param_shardings, transform_non_params=lambda _: replicated
    )
    rewind = cfg.train.rewind.enabled
    detector = spike_detector(cfg.train.rewind) if rewind else None
    state_shardings = dict(
        params=param_shardings, rest=rest_shardings, opt_state=opt_shardings, step=replicated, initial_loss=replicated,
        data_offset=replicated,
    )
    if rewind:
        state_shardings["spike_detector"] = jax.tree.map(lambda _: replicated, jax.eval_shape(detector.init, ()))

    def init():
        _, params, rest = nnx.split(new_model(), nnx.Param, ...)
        params = nnx.to_pure_dict(params)
        state = dict(
            params=params,
            rest=nnx.to_pure_dict(rest),
            opt_state=tx0.init(params),
            step=jnp.zeros([], jnp.int32),
            initial_loss=jnp.full([], jnp.nan, jnp.float32),
            data_offset=jnp.zeros([], jnp.int32),
        )
        return dict(state, spike_detector=detector.init(())) if rewind else state

    def forward(params, rest, batch_BxS, diagnostics: bool):
        model = nnx.merge(graphdef, params, rest)
        logits_BxTxV, diag = model(batch_BxS[:, :-1], diagnostics)
        loss, aux = transformer.lm_loss(logits_BxTxV, batch_BxS[:, 1:], cfg.loss.z_loss, diagnostics)
        new_rest = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
        return loss, (aux, diag, new_rest)

    grad_fn = jax.value_and_grad(forward, has_aux=True)

    def train_step(state, batch_BxS, hparams):
        (loss, (aux, _, new_rest)), grads = grad_fn(state["params"], state["rest"], batch_BxS, False)
        if cfg.train.spike_at_step:  # injected spike (base.py): the gradient of spike_scale · loss on that batch
            batch_num = state["step"] + state["data_offset"] + 1
            spike = jnp.where(batch_num == cfg.train.spike_at_step, cfg.train.spike_scale, 1.0)
            grads = jax.tree.map(lambda g: g * spike.astype(g.dtype), grads)
        tx = optim.make_optimizer(cfg.optim, total_steps, hparams)
        # skip_step judges the unscaled CE and the (possibly spiked) gradient norm (spec optimizers §10)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"], loss=aux["ce"])
        params = optax.apply_updates(state["params"], updates)
        step_metrics = dict(
            loss=loss,
            grad_norm=optax.global_norm(grads),
            lr=optim.make_schedule(cfg.optim, total_steps, hparams)(state["step"]),
            **aux,
            **optim.state_metrics(opt_state),
        )
        new_state = dict(state, params=params, rest=new_rest, opt_state=opt_state, step=state["step"] + 1)
        if rewind:  # the rewind's spike test on this step's CE (the data offset passes through untouched)
            _, test = detector.update((), state["spike_detector"], loss=aux["ce"])
            new_state["spike_detector"] = test
            step_metrics.update(spike=test.skipped, spike_ce_z=test.loss_z)
        return new_state, step_metrics

    def eval_step(state, batch_BxS):
        _, (aux, _, _) = forward(state["params"], state["rest"], batch_BxS, False)
        return aux["ce"]

    def eval_buckets(state, batch_BxS, bucket_ids_NxV):
        """Eval CE summed per token-frequency bucket and the number of targets per bucket, float32[N, K] each, for
        N tables int32[N, V] of each target id's bucket (`frequency_buckets`) and K = train.freq_buckets (spec
        optimizers §2(a)). Accumulated over an eval pass, sums / counts is the token-weighted mean CE per bucket."""
        model = nnx.merge(graphdef, state["params"], state["rest"])
        logits_BxTxV, _ = model(batch_BxS[:, :-1], False)
        ce_M = transformer.token_ce(logits_BxTxV, batch_BxS[:, 1:])[0].reshape(-1)
        ids_NxM = bucket_ids_NxV[:, batch_BxS[:, 1:].reshape(-1)]
        per_bucket = jax.vmap(lambda ids, x: jnp.zeros(cfg.train.freq_buckets, jnp.float32).at[ids].add(x), (0, None))
        return per_bucket(ids_NxM, ce_M), per_bucket(ids_NxM, 1.0)

    def diagnose(state, batch_BxS, hparams):
        """DESIGN §5 diagnostics on one batch, without changing the state (the run's trajectory is unaffected).

        Metric names (stable: metrics.jsonl, TensorBoard and launch.report use them); `/layer_i` is the block index,
        `<path>` a parameter path such as blocks/0/attn/q/kernel, `<module>` a module path such as blocks/0/attn/q:

        | name                                | meaning                                                                    |
        |-------------------------------------|----------------------------------------------------------------------------|
        | attn_max_logit/layer_i              | max pre-softmax logit q·k/sqrt(Dh) over the batch (softplus: max stage-1   |
        |                                     | pre-activation log(Dh)·log(i)·q̂·k̂)                                         |
        | attn_max_logit_{global,local}/layer_i | ls only: the same per head group                                         |
        | attn_entropy/layer_i                | attention entropy -Σ_j A_ij log(A_ij + 1e-6), mean over batch, heads, rows |
        | attn_entropy_per_head/layer_i       | the same per head (a vector: one TensorBoard scalar per head)              |
        | attn_degenerate_frac/layer_i        | softplus with reweight: fraction of rows that re-weighting zeroed          |
        | logz_mean, logz_sq_mean             | mean log Z and mean log² Z of the output logits                            |
        | logit_mean, logit_min, logit_max    | output-logit statistics                                                    |
        | tev_mu, tev_sigma                   | token-embedding variability: mean and std over all rows of std_j E_ij      |
        | tev_batch_mu, tev_batch_sigma       | the same over the rows of the tokens in the diagnosed batch                |
        | param_rms/<path>                    | RMS of each parameter tensor                                               |
        | grad_rms/<path>                     | RMS of each gradient tensor (before clipping)                              |
        | update_rms/<path>                   | RMS of each update tensor (what is added to the parameter)                 |
        | adam_attenuation/<path>             | RMS(m̂/(√v̂+ε)) / RMS(m̂/√v̂) after this step's moment update (adamw only)     |
        | sigma/<module>                      | σReparam: power-iteration estimate of σ(W) (one step from the stored u)    |
        | gamma/<module>, gamma_over_sigma/<module> | σReparam: the learned γ, and γ/σ (the scale applied to W)            |
        """
        (_, (aux, diag, rest)), grads = grad_fn(state["params"], state["rest"], batch_BxS, True)
        tx = optim.make_optimizer(cfg.optim, total_steps, hparams)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"], loss=aux["ce"])
        model = nnx.merge(graphdef, state["params"], rest)  # this forward's σReparam estimates; never kept
        out = {k: v for k, v in aux.items() if k not in ("ce", "z_loss")}
        out.update(diag)
        out.update(embedding_metrics(model, batch_BxS[:, :-1]))
        out.update(layers.sigma_reparam_metrics(model))
        out.update(per_tensor_rms(state["params"], "param_rms"))
        out.update(per_tensor_rms(grads, "grad_rms"))
        out.update(per_tensor_rms(updates, "update_rms"))
        out.update(adam_attenuation(opt_state, hparams["eps"], hparams["b1"], hparams["b2"]))
        return out

    return Program(cfg, graphdef, mesh, state_shardings, init, train_step, eval_step, eval_buckets, diagnose)


def jit_program(prog: Program):
    """Compiled (init, train_step, eval_step, diagnose) with explicit shardings and donated state."""
    batch = jax.sharding.NamedSharding(prog.mesh, mesh_lib.batch_spec())
    replicated = jax.sharding.NamedSharding(prog.mesh, jax.sharding.PartitionSpec())
    init = jax.jit(prog.init, out_shardings=prog.state_shardings)
    step = jax.jit(
        prog.train_step,
        in_shardings=(prog.state_shardings, batch, replicated),
        out_shardings=(prog.state_shardings, replicated),
        donate_argnums=(0,),
    )
    evaluate = jax.jit(prog.eval_step, in_shardings=(prog.state_shardings, batch), out_shardings=replicated)
    diagnose = jax.jit(prog.diagnose, in_shardings=(prog.state_shardings, batch, replicated))
    return init, step, evaluate, diagnose


def hparams_array(cfg) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in optim.hparams_from_config(cfg.optim).items()}


# ---------------------------------------------------------------------------------------------------------------
# The runtime: one run from a config into a run directory.
# ---------------------------------------------------------------------------------------------------------------


class Progress:
    """One line per log step: step, loss, lr, tokens/s, ETA."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled

    def __call__(self, step: int, loss: float, lr: float, tok_s: float, eta_s: float, extra: str = "") -> None:
        if self.enabled:
            print(
                f"step {step:>7d}/{self.total} | loss {loss:8.4f} | lr {lr:.2e} | {tok_s / 1e3:9.1f}k tok/s"
                f" | eta {eta_s:6.0f}s{extra}",
                flush=True,
            )


def _finite_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def due(every: int, step_num: int, total: int) -> bool:
    """Whether a periodic action (log, eval, checkpoint) runs after `step_num` steps: every `every`, and at the end."""
    return step_num == total or (every > 0 and step_num % every == 0)


def diverged(loss, ce, threshold):
    """The divergence rule (DESIGN §8), elementwise: a non-finite loss, or training CE above the threshold.

    Used on the host by `RunRecord` and inside the batched sweep step, so both agree step for step.
    """
    return jnp.logical_or(~jnp.isfinite(loss), jnp.asarray(ce) > threshold)  # compared in float32 on both sides


def evaluate_loss(evaluate, state, source, cfg, mesh):
    """Mean eval CE over `train.eval_batches` held-out batches: a float, or one per member for a batched state."""
    losses = [
        evaluate(state, mesh_lib.global_batch(mesh, source.batch(i, split="eval"))) for i in range(cfg.train.eval_batches)
    ]
    return np.mean(jax.device_get(losses), axis=0)


# The eval metrics of `train.freq_buckets`, one per row of `frequency_buckets`'s table (vectors, bucket 0 = most
# frequent).
BUCKET_METRICS = ("eval_loss_rank_bucket", "eval_loss_mass_bucket")


def frequency_buckets(counts, n: int) -> np.ndarray:
    """int32[2, V]: the bucket of each token id by its train-split frequency `counts` (spec optimizers §2(a), §5(a)).

    Tokens are ranked most frequent first (ties by id). Row 0, rank buckets (the "Fair" view): n buckets of equal
    numbers of token types, rank r in bucket r·n // V. Row 1, equal-mass buckets: Kunstner et al.'s
    `split_classes_by_frequency`, each holding ~1/n of the occurrences; the token at which the cumulative mass
    first reaches k/n closes bucket k-1, so a bucket is empty when one token holds more than 1/n of the mass.
    """
    counts = np.asarray(counts)
    ranks = np.arange(len(counts))
    order = np.argsort(-counts, kind="stable")
    cum = np.cumsum(counts[order] / counts.sum())
    splits = np.searchsorted(cum, np.linspace(0, 1, n, endpoint=False)[1:], side="left") + 1
    table = np.empty((2, len(counts)), np.int32)
    table[0, order] = ranks * n // len(counts)
    table[1, order] = np.searchsorted(splits, ranks, side="right")
    return table


def evaluate_buckets(eval_buckets, state, source, cfg, mesh, table) -> dict:
    """The `BUCKET_METRICS` over the `train.eval_batches` held-out batches of `evaluate_loss`: the token-weighted
    mean CE per bucket (NaN for a bucket without targets), float64[K] each, or float64[M, K] (one row per member)
    for a batched state and `eval_buckets` vmapped over its member axis (launch/sweep.py)."""
    sums = counts = 0.0
    for i in range(cfg.train.eval_batches):
        s, c = jax.device_get(eval_buckets(state, mesh_lib.global_batch(mesh, source.batch(i, split="eval")), table))
        sums, counts = sums + s.astype(np.float64), counts + c
    with np.errstate(invalid="ignore", divide="ignore"):
        return dict(zip(BUCKET_METRICS, np.moveaxis(sums / counts, -2, 0)))  # the table's row axis N first


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What runs of one program share: mesh, data source, program and its jitted functions.

    Runs whose configs differ only in optimizer scalars (optim.HPARAM_KEYS) may share one Runtime: those scalars
    are traced arguments, so the compiled step is reused (launch.sweep keeps a cache of these).
    """

    mesh: jax.sharding.Mesh
    source: data.TokenSource
    prog: Program
    init: Callable
    step: Callable
    evaluate: Callable
    diagnose: Callable


def fresh_state(rt: Runtime, cfg) -> dict:
    """The initialised train state with `initial_loss` measured: the eval loss of the untrained model (ℓ0)."""
    state = rt.init()
    initial = jnp.asarray(evaluate_loss(rt.evaluate, state, rt.source, cfg, rt.mesh), jnp.float32)
    state["initial_loss"] = jax.device_put(initial, rt.prog.state_shardings["initial_loss"])  # as steps return it
    return state


def make_runtime(cfg) -> Runtime:
    mesh = mesh_lib.make_mesh(cfg.mesh)
    source = data.make_source(
        cfg.data,
        vocab_size=cfg.model.vocab_size,
        seed=cfg.train.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    prog = build_program(cfg, mesh)
    return Runtime(mesh, source, prog, *jit_program(prog))


# A rewind's record: a metrics row at the restored step with these as rewind_<field>, and summary.json's `rewinds`.
REWIND_FIELDS = ("detected_at", "restored_step", "data_offset")


class RunRecord:
    """The host side of one run: metrics rows, progress lines, the divergence rule, and summary.json.

    `train` feeds it its run's metrics; the batched sweep executor (launch/sweep.py) feeds one per member with
    the member's slice of the batched metrics, so both write the same files by the same rules.
    """

    def __init__(
        self, cfg, workdir: Path, *, start: int, initial_loss: float, n_params: int, verbose: bool, data_offset: int = 0
    ):
        self.cfg, self.workdir, self.start = cfg, workdir, start
        self.is_main = jax.process_index() == 0
        self.verbose = verbose and self.is_main
        self.initial_loss, self.n_params = initial_loss, n_params
        self.total = int(cfg.train.steps)
        self.tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        self.threshold = initial_loss + cfg.train.divergence_margin
        self.progress = Progress(self.total, enabled=cfg.train.progress and self.verbose)
        if start == 0 and self.is_main:  # rows of an attempt killed before its first checkpoint are stale
            (workdir / "metrics.jsonl").unlink(missing_ok=True)
        self.writer = self._open_writer(start, data_offset)
        if start == 0:
            self.writer.write(0, {"eval_loss": initial_loss})
        # earlier rows are needed only for the rewind record and to finish a run killed after its last checkpoint
        need_rows = cfg.train.rewind.enabled or start == self.total
        rows = metrics_lib.read_jsonl(workdir / "metrics.jsonl") if need_rows else []
        self.rewinds = [
            {k: r[f"rewind_{k}"] for k in REWIND_FIELDS} for r in rows if "rewind_data_offset" in r
        ] if self.is_main else []
        self.diverged_at, self.last_window, self.eval_loss, self.eval_buckets = None, [], None, {}
        if start == self.total:  # killed between the final checkpoint and summary.json: recover the end rows
            end = [r for r in rows if r["step"] == start]
            self.last_window = [r["ce_mean"] for r in end if r.get("ce_mean") is not None][-1:]
            last_eval = next((r for r in reversed(end) if "eval_loss" in r), {})
            self.eval_loss = last_eval.get("eval_loss")
            self.eval_buckets = {k: last_eval[k] for k in BUCKET_METRICS if k in last_eval}
        self.t_start = self.t_window = time.time()
        self.timed_tokens, self.timed_seconds = 0, 0.0

    def _open_writer(self, step: int, data_offset: int) -> metrics_lib.MetricWriter:
        """The metrics writer of a (re)start at `step`: the rows of later steps, abandoned, are dropped, except the
        rewind rows that the state's `data_offset` already includes (a rewind to an earlier step keeps the record of
        one before it; a resume drops those it is about to replay)."""

        def keep(row):
            if "rewind_data_offset" in row:
                return row["rewind_data_offset"] <= data_offset
            return row.get("step", 0) <= step

        return metrics_lib.MetricWriter(self.workdir, resume_step=step, enabled=self.is_main, keep=keep)

    def write(self, step: int, metrics: dict) -> None:
        self.writer.write(step, metrics)

    def rewound(self, spike_step: int, spike_row: dict, restored_step: int, data_offset: int) -> None:
        """Records a rewind (`train.rewind`): the rows of the abandoned steps after `restored_step` are superseded
        as on a resume, a row at `restored_step` holds the `REWIND_FIELDS` (as rewind_<field>), and a line says so."""
        self.writer.close()
        self.writer = self._open_writer(restored_step, data_offset)
        event = dict(zip(REWIND_FIELDS, (spike_step, restored_step, data_offset)))
        self.writer.write(restored_step, {f"rewind_{k}": v for k, v in event.items()})
        self.rewinds.append(event)
        self.t_window = time.time()
        if self.verbose:
            r = self.cfg.train.rewind
            print(
                f"rewind {data_offset // r.skip_batches}/{r.max_rewinds}: CE {float(spike_row['ce']):.4g} spiked at "
                f"step {spike_step} (z = {float(spike_row['spike_ce_z']):.1f}); restored step {restored_step}, "
                f"data offset {data_offset} batches",
                flush=True,
            )

    def log_window(self, rows: list[tuple[int, dict]]) -> bool:
        """Records the host metrics of the steps since the last log step; True when the run diverged in them."""
        now = time.time()
        window_tokens, window_seconds = self.tokens_per_step * len(rows), now - self.t_window
        if rows[0][0] > self.start + 1:  # the first window after a (re)start includes compilation: not timed
            self.timed_tokens += window_tokens
            self.timed_seconds += window_seconds
        tok_s = window_tokens / max(window_seconds, 1e-9)
        self.t_window = now
        bad = np.asarray(diverged(*(np.array([r[k] for _, r in rows]) for k in ("loss", "ce")), self.threshold))
        s, r = rows[int(bad.argmax())] if bad.any() else rows[-1]
        if bad.any():
            self.diverged_at = s
        self.last_window = [float(row["ce"]) for _, row in rows]
        self.writer.write(s, {**r, "ce_mean": np.mean(self.last_window), "tokens_per_second": tok_s})
        eta = (self.total - s) * (now - self.t_start) / max(s - self.start, 1)
        self.progress(s, float(r["loss"]), float(r["lr"]), tok_s, eta)
        if self.diverged_at is not None and self.verbose:
            print(f"diverged at step {s} (loss {float(r['loss']):.4g} > {self.threshold:.4g} or non-finite)")
        return self.diverged_at is not None

    def log_eval(self, step: int, eval_loss: float, buckets: dict | None = None) -> bool:
        """Records an eval loss (and the `BUCKET_METRICS` in `buckets`); True (diverged) when it is not finite."""
        self.eval_loss, self.eval_buckets = float(eval_loss), dict(buckets or {})
        self.writer.write(step, {"eval_loss": self.eval_loss, **self.eval_buckets})
        if not math.isfinite(self.eval_loss):
            self.diverged_at = step
        return self.diverged_at is not None

    def finish(self) -> dict:
        """Writes summary.json (DESIGN §3) and closes the writers; returns the summary."""
        wall = time.time() - self.t_start
        ok = self.diverged_at is None
        summary = dict(
            finished=True,
            diverged=not ok,
            diverged_at_step=self.diverged_at,
            initial_loss=self.initial_loss,
            final_loss=_finite_float(np.mean(self.last_window)) if self.last_window and ok else None,
            eval_loss=_finite_float(self.eval_loss) if self.eval_loss is not None and ok else None,
            steps=self.total if ok else self.diverged_at,
            tokens=self.total * self.tokens_per_step,
            tokens_per_second=self.timed_tokens / self.timed_seconds if self.timed_seconds else None,
            wall_seconds=wall,
            n_params=self.n_params,
            lr=float(self.cfg.optim.lr),
            **{k: metrics_lib.to_json_value(v) for k, v in self.eval_buckets.items() if ok},
            **({"rewinds": self.rewinds} if self.cfg.train.rewind.enabled else {}),
        )
        self.writer.close()
        if self.is_main:
            metrics_lib.write_json_atomic(self.workdir / "summary.json", summary)
        if self.verbose:
            print(
                f"done: {'finished' if ok else f'DIVERGED at step {self.diverged_at}'}; "
                f"final loss {summary['final_loss']}, eval loss {summary['eval_loss']}, {wall:.1f}s",
                flush=True,
            )
        return summary


def finished_summary(workdir: Path) -> dict | None:
    """The summary of a finished run in `workdir`, or None."""
    path = workdir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else None
    return summary if summary and summary.get("finished") else None


def first_spike(rows: list[tuple[int, dict]], threshold: float) -> int | None:
    """The step of the first CE spike (the `spike` metric of train.rewind) among a log window's rows, or None; also
    None when the divergence rule fires at an earlier step (that run diverged before it spiked)."""
    spikes = [s for s, r in rows if r["spike"]]
    bad = [s for s, r in rows if diverged(r["loss"], r["ce"], threshold)]
    return spikes[0] if spikes and (not bad or spikes[0] <= bad[0]) else None


def rewind_step(steps, spike_step: int, steps_back: int) -> int:
    """The checkpoint a rewind restores: the newest of `steps` at or before max(0, spike_step − steps_back), or the
    oldest one when all are newer (after a rewind deleted the newer ones, retention may have dropped the older)."""
    target = max(0, spike_step - steps_back)
    return max((s for s in steps if s <= target), default=min(steps))


def rewind_state(prog: Program, ckpt, decayed, spike_step: int, steps_back: int, data_offset: int) -> tuple[int, dict]:
    """(step, state) of a rewind (spec optimizers §10(a)): the checkpoint of `rewind_step` with its data offset set
    to `data_offset`. The checkpoints after it (and WSD-S decayed ones) belong to the abandoned steps and are
    deleted, so a resume cannot pick them up; a kill before the next checkpoint replays the same spike and rewind."""
    restored = rewind_step(ckpt.manager.all_steps(), spike_step, steps_back)
    for c in (ckpt, decayed):
        for s in [s for s in (c.manager.all_steps() if c else []) if s > restored]:
            c.manager.delete(s)
    state = ckpt.restore(restored, prog.abstract_state())
    state["data_offset"] = jax.device_put(jnp.asarray(data_offset, jnp.int32), prog.state_shardings["data_offset"])
    return restored, state


def state_from_run(prog: Program, workdir: Path, source: Path, step: int) -> dict:
    """The state saved at `step` in the run directory `source`, with `source`'s metrics rows up to `step` copied into
    `workdir`, so that a run started from it reads as one run from step 0 (a WSD branch: launch/branch.py)."""
    ckpt = checkpoint.Checkpointer(source / "checkpoints", keep=None)
    try:
        state = ckpt.restore(step, prog.abstract_state())
    except Exception as e:  # noqa: BLE001 - a missing step, or a checkpoint of a different model or state
        raise configs.ConfigError(f"cannot restore step {step} of {source}: {str(e).strip().splitlines()[0]}") from None
    finally:
        ckpt.close()
    if jax.process_index() == 0:
        rows = metrics_lib.read_jsonl(source / "metrics.jsonl")
        metrics_lib.write_jsonl_atomic(workdir / "metrics.jsonl", [r for r in rows if r.get("step", 0) <= step])
    return state


def train(
    cfg,
    workdir: str | Path,
    runtime: Runtime | None = None,
    verbose: bool = True,
    start_from: tuple[str | Path, int] | None = None,
) -> dict:
    """Trains (or resumes, or does nothing if finished) the run in `workdir`; returns its summary.

    With optim.schedule = wsd_s, the state at the end of every decay (`optim.wsd_s_decay_ends`) is also saved to
    `workdir/decayed/<step>/`, kept for good, with a `decayed_eval_loss` row; training goes on from that state
    untouched (spec optimizers §3(a)). With train.freq_buckets, each eval adds the `BUCKET_METRICS`.

    Step t trains on batch t + data_offset of the data stream (a train-state scalar, so checkpoints record it).
    With train.rewind (PaLM, spec optimizers §10(a)), a CE spike (`spike_detector`) seen at a log step rewinds the
    run to the newest checkpoint at or before (spike − steps_back) and advances data_offset by skip_batches; the
    abandoned steps' rows are superseded, a rewind row and summary.json's `rewinds` record it. After
    train.rewind.max_rewinds rewinds, spikes are ignored and the divergence rule decides.

    `runtime` (from `make_runtime` of a config equal up to optimizer scalars) skips building and compiling anew;
    `verbose=False` silences the start, progress and done lines. `start_from` = (run directory, step): a run
    without checkpoints of its own starts from that run's state at that step (`state_from_run`) instead of a
    fresh one and saves it as its first checkpoint.
    """
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    configs.validate(cfg, n_devices=jax.device_count(), n_processes=jax.process_count())
    configs.claim_workdir(cfg, workdir, write=is_main)
    summary = finished_summary(workdir)
    if summary is not None:
        if verbose:
            print(f"{workdir}: already finished (summary.json); nothing to do", flush=True)
        return summary

    rt = runtime or make_runtime(cfg)
    mesh, source = rt.mesh, rt.source
    hparams = hparams_array(cfg)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_ckpts)
    rewind = cfg.train.rewind

    start, state = ckpt.restore_latest(rt.prog.abstract_state())
    if state is None and start_from is not None:
        start, state = start_from[1], state_from_run(rt.prog, workdir, Path(start_from[0]), start_from[1])
        ckpt.save(start, state)
    elif state is None:
        start, state = 0, fresh_state(rt, cfg)
        if rewind.enabled:  # what a spike within steps_back of the start rewinds to
            ckpt.save(0, state)
    elif verbose:
        print(f"resuming {workdir} from step {start}", flush=True)
    initial_loss, offset = float(state["initial_loss"]), int(state["data_offset"])
    n_params = transformer.count_params(state["params"])
    total = int(cfg.train.steps)
    if start == 0 and verbose and is_main:
        print(
            f"{workdir}: {n_params / 1e6:.2f}M params, mesh {dict(mesh.shape)}, {total} steps of "
            f"{cfg.data.batch_size}x{cfg.data.seq_len} tokens, initial loss {initial_loss:.4f}",
            flush=True,
        )
    record = RunRecord(
        cfg, workdir, start=start, initial_loss=initial_loss, n_params=n_params, verbose=verbose, data_offset=offset
    )
    wsd_s = cfg.optim.schedule == "wsd_s"
    decay_ends = set(optim.wsd_s_decay_ends(total, cfg.optim.wsd.cycles)) if wsd_s else set()
    decayed = checkpoint.Checkpointer(workdir / "decayed", keep=None) if wsd_s else None
    if cfg.train.freq_buckets:
        bucket_table = frequency_buckets(source.token_counts(), cfg.train.freq_buckets)
        eval_buckets = jax.jit(rt.prog.eval_buckets)

    pending, step = [], start
    while step < total:
        step_num = step + 1  # steps completed after this update
        batch = mesh_lib.global_batch(mesh, source.batch(step + offset))
        if cfg.train.diag_every and step_num % cfg.train.diag_every == 0:
            record.write(step_num, jax.device_get(rt.diagnose(state, batch, hparams)))
        state, m = rt.step(state, batch, hparams)
        pending.append((step_num, m))
        if due(cfg.train.log_every, step_num, total):
            rows, pending = jax.device_get(pending), []
            rewinds_left = rewind.enabled and offset // rewind.skip_batches < rewind.max_rewinds
            spike_step = first_spike(rows, record.threshold) if rewinds_left else None
            if spike_step is not None:
                offset += rewind.skip_batches
                step, state = rewind_state(rt.prog, ckpt, decayed, spike_step, rewind.steps_back, offset)
                record.rewound(spike_step, dict(rows)[spike_step], step, offset)
                continue
            if record.log_window(rows):
                break
        eval_due = cfg.train.eval_every and due(cfg.train.eval_every, step_num, total)
        if eval_due or step_num in decay_ends:
            eval_loss = evaluate_loss(rt.evaluate, state, source, cfg, mesh)
        if eval_due:
            buckets = (
                evaluate_buckets(eval_buckets, state, source, cfg, mesh, bucket_table) if cfg.train.freq_buckets else {}
            )
            if record.log_eval(step_num, eval_loss, buckets):
                break
        if step_num in decay_ends:
            record.write(step_num, {"decayed_eval_loss": eval_loss})
            if (decayed.latest_step() or 0) < step_num:  # a resume may repeat a decay end already saved
                decayed.save(step_num, state)
        if due(cfg.train.ckpt_every, step_num, total):
            ckpt.save(step_num, state)
        step = step_num
    ckpt.close()
    if decayed is not None:
        decayed.close()
    return record.finish()


def main(argv) -> None:
    del argv
    from absl import flags

    train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main, config="file", workdir=True)
