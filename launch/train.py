"""`python -m launch.train --config=experiments/base.py:tiny --workdir=runs/a [--config.x.y=v ...]`: one run.

The functional core (DESIGN §4): `nnx.split` turns the model into (graphdef, params, rest); the train state is a
plain dict {params, rest, opt_state, step, initial_loss}; `train_step(state, batch, hparams)` is a pure function,
jitted with explicit shardings from launch/mesh.py and donated buffers. Optimizer scalars (lr, weight decay, ...)
are traced arguments, so runs that differ only in them reuse one compiled program, and the batched sweep
executor can vmap the same function over them.

The run directory (DESIGN §3): config.json, metrics.jsonl, summary.json, tb/, checkpoints/. Re-running the same
command resumes from the newest checkpoint and ends bitwise equal to an uninterrupted run (on CPU). A diverged
run (non-finite loss, or training CE above initial_loss + train.divergence_margin) stops, writes
`diverged: true` and `diverged_at_step` to summary.json, and exits 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optim
from launch import checkpoint, configs, data, mesh as mesh_lib, metrics as metrics_lib
from models import transformer


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
    diagnose: Callable  # (state, batch, hparams) -> diagnostics dict


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
    state_shardings = dict(
        params=param_shardings, rest=rest_shardings, opt_state=opt_shardings, step=replicated, initial_loss=replicated
    )

    def init():
        _, params, rest = nnx.split(new_model(), nnx.Param, ...)
        params = nnx.to_pure_dict(params)
        return dict(
            params=params,
            rest=nnx.to_pure_dict(rest),
            opt_state=tx0.init(params),
            step=jnp.zeros([], jnp.int32),
            initial_loss=jnp.full([], jnp.nan, jnp.float32),
        )

    def forward(params, rest, batch_BxS, diagnostics: bool):
        model = nnx.merge(graphdef, params, rest)
        logits_BxTxV, diag = model(batch_BxS[:, :-1], diagnostics)
        loss, aux = transformer.lm_loss(logits_BxTxV, batch_BxS[:, 1:], cfg.loss.z_loss, diagnostics)
        new_rest = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
        return loss, (aux, diag, new_rest)

    grad_fn = jax.value_and_grad(forward, has_aux=True)

    def train_step(state, batch_BxS, hparams):
        (loss, (aux, _, new_rest)), grads = grad_fn(state["params"], state["rest"], batch_BxS, False)
        tx = optim.make_optimizer(cfg.optim, total_steps, hparams)
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
        return new_state, step_metrics

    def eval_step(state, batch_BxS):
        _, (aux, _, _) = forward(state["params"], state["rest"], batch_BxS, False)
        return aux["ce"]

    def diagnose(state, batch_BxS, hparams):
        """DESIGN §5 diagnostics on one batch, without changing the state (the run's trajectory is unaffected)."""
        (_, (aux, diag, _)), grads = grad_fn(state["params"], state["rest"], batch_BxS, True)
        tx = optim.make_optimizer(cfg.optim, total_steps, hparams)
        updates, _ = tx.update(grads, state["opt_state"], state["params"], loss=aux["ce"])
        out = {k: v for k, v in aux.items() if k not in ("ce", "z_loss")}
        out.update(diag)
        out.update(per_tensor_rms(state["params"], "param_rms"))
        out.update(per_tensor_rms(grads, "grad_rms"))
        out.update(per_tensor_rms(updates, "update_rms"))
        return out

    return Program(cfg, graphdef, mesh, state_shardings, init, train_step, eval_step, diagnose)


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


def evaluate_loss(evaluate, state, source, cfg, mesh) -> float:
    losses = [
        evaluate(state, mesh_lib.global_batch(mesh, source.batch(i, split="eval"))) for i in range(cfg.train.eval_batches)
    ]
    return float(np.mean(jax.device_get(losses)))


def train(cfg, workdir: str | Path) -> dict:
    """Trains (or resumes, or does nothing if finished) the run in `workdir`; returns its summary."""
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    configs.validate(cfg, n_devices=jax.device_count(), n_processes=jax.process_count())
    summary_path = workdir / "summary.json"
    configs.claim_workdir(cfg, workdir, write=is_main)
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("finished"):
            print(f"{workdir}: already finished (summary.json); nothing to do", flush=True)
            return summary

    mesh = mesh_lib.make_mesh(cfg.mesh)
    source = data.make_source(
        cfg.data,
        vocab_size=cfg.model.vocab_size,
        seed=cfg.train.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    prog = build_program(cfg, mesh)
    init, step_fn, evaluate, diagnose = jit_program(prog)
    hparams = hparams_array(cfg)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_ckpts)

    abstract_state = jax.eval_shape(init)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, prog.state_shardings
    )
    start, state = ckpt.restore_latest(abstract_state)
    if state is None:
        start, state = 0, init()
        state["initial_loss"] = jnp.asarray(evaluate_loss(evaluate, state, source, cfg, mesh), jnp.float32)
    else:
        print(f"resuming {workdir} from step {start}", flush=True)
    initial_loss = float(state["initial_loss"])
    n_params = transformer.count_params(state["params"])

    writer = metrics_lib.MetricWriter(workdir, resume_step=start, enabled=is_main)
    total = int(cfg.train.steps)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    progress = Progress(total, enabled=cfg.train.progress and is_main)
    if start == 0 and is_main:
        print(
            f"{workdir}: {n_params / 1e6:.2f}M params, mesh {dict(mesh.shape)}, {total} steps of "
            f"{cfg.data.batch_size}x{cfg.data.seq_len} tokens, initial loss {initial_loss:.4f}",
            flush=True,
        )
        writer.write(0, {"eval_loss": initial_loss})

    threshold = initial_loss + cfg.train.divergence_margin
    diverged_at, pending, last_window = None, [], []
    eval_loss = None
    t_start, timed_tokens, timed_seconds = time.time(), 0, 0.0
    t_window = time.time()

    for step in range(start, total):
        step_num = step + 1  # steps completed after this update
        batch = mesh_lib.global_batch(mesh, source.batch(step))
        if cfg.train.diag_every and step_num % cfg.train.diag_every == 0:
            writer.write(step_num, jax.device_get(diagnose(state, batch, hparams)))
        state, m = step_fn(state, batch, hparams)
        pending.append((step_num, m))

        is_last = step_num == total
        if step_num % cfg.train.log_every == 0 or is_last:
            rows = jax.device_get(pending)
            now = time.time()
            window_tokens, window_seconds = tokens_per_step * len(pending), now - t_window
            if pending[0][0] > start + 1:  # the first window after a (re)start includes compilation: not timed
                timed_tokens += window_tokens
                timed_seconds += window_seconds
            tok_s = window_tokens / max(window_seconds, 1e-9)
            t_window = now
            for s, r in rows:
                if not math.isfinite(float(r["loss"])) or float(r["ce"]) > threshold:
                    diverged_at = s
                    break
            last_window = [float(r["ce"]) for _, r in rows]
            s, r = rows[-1] if diverged_at is None else next(x for x in rows if x[0] == diverged_at)
            writer.write(s, {**r, "tokens_per_second": tok_s})
            progress(s, float(r["loss"]), float(r["lr"]), tok_s, (total - s) * (now - t_start) / max(s - start, 1))
            pending = []
            if diverged_at is not None:
                print(f"diverged at step {diverged_at} (loss {float(r['loss']):.4g} > {threshold:.4g} or non-finite)")
                break

        if cfg.train.eval_every and (step_num % cfg.train.eval_every == 0 or is_last):
            eval_loss = evaluate_loss(evaluate, state, source, cfg, mesh)
            writer.write(step_num, {"eval_loss": eval_loss})
            if not math.isfinite(eval_loss):
                diverged_at = step_num
                break
        if (cfg.train.ckpt_every and step_num % cfg.train.ckpt_every == 0) or is_last:
            ckpt.save(step_num, state)

    wall = time.time() - t_start
    summary = dict(
        finished=True,
        diverged=diverged_at is not None,
        diverged_at_step=diverged_at,
        initial_loss=initial_loss,
        final_loss=_finite_float(np.mean(last_window)) if last_window and diverged_at is None else None,
        eval_loss=_finite_float(eval_loss) if eval_loss is not None and diverged_at is None else None,
        steps=int(cfg.train.steps) if diverged_at is None else diverged_at,
        tokens=int(cfg.train.steps) * tokens_per_step,
        tokens_per_second=timed_tokens / timed_seconds if timed_seconds else None,
        wall_seconds=wall,
        n_params=n_params,
        lr=float(cfg.optim.lr),
    )
    writer.close()
    ckpt.close()
    if is_main:
        metrics_lib.write_json_atomic(summary_path, summary)
        print(
            f"done: {'DIVERGED at step ' + str(diverged_at) if diverged_at else 'finished'}; "
            f"final loss {summary['final_loss']}, eval loss {summary['eval_loss']}, {wall:.1f}s",
            flush=True,
        )
    return summary


def main(argv) -> None:
    del argv
    from absl import flags

    train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    configs.run_cli(main, needs_workdir=True)
