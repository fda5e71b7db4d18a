"""What a finished sweep cost: its trials' model FLOPs over the device time their programs took (issue 15).

    python -m benchmarks.sweep_cost experiments/results/sweeps/spike_no_more_code11 [DIR ...] [--out=rows.jsonl]
    python -m benchmarks.results_table rows.jsonl        # the same table, from the rows

Reads only the sweep directory: results.jsonl (per trial: tokens, wall_seconds) and each trial's config.json.
The programs are the ones the batched executor recorded (groups/*/group.json: its members), so slices run in
separate invocations into one directory count as the programs they were; a directory without that record (the
local executor's, or older) is regrouped as launch/sweep.py `group_trials` would group it. A program's device time
is the largest `wall_seconds` of its members (members of one program finish together; compilation, evals,
diagnostics and checkpoints included). Then

    sweep MFU = Σ_trials tokens · FLOPs/token (launch/flops.py, training only) / Σ_programs seconds / peak

against the H200 datasheet's 989 TFLOP/s and the measured 790. The program seconds leave out what the sweep
does between programs (process start, data opening, the report), so the sweep's wall clock is somewhat longer:
`status_wall_seconds` gives it where status.json recorded when the invocation started (sweeps from session 12
on) and that invocation ran every finished trial, else null (a sweep resumed or sliced over several invocations:
status.json is the last one's).
"""

from __future__ import annotations

import json
from pathlib import Path

from launch import configs, flops, plan, records, sweep


def _recorded_programs(workdir: Path, trials: list[sweep.Trial]) -> list[list[sweep.Trial]] | None:
    """The programs as groups/*/group.json recorded them, restricted to finished trials; None unless they cover
    every finished trial exactly once."""
    by_id = {t.id: t for t in trials}
    programs = []
    for path in sorted((workdir / "groups").glob("*/group.json")):
        members = [by_id[m] for m in json.loads(path.read_text())["members"] if m in by_id]
        if members:
            programs.append(members)
    ids = [t.id for p in programs for t in p]
    return programs if sorted(ids) == sorted(by_id) else None


def sweep_cost(workdir: Path) -> dict:
    """One row: trials, programs, tokens, model PFLOPs, program seconds, tokens/s and sweep MFU of `workdir`."""
    rows = [r for r in records.read_results(workdir / "results.jsonl") if not r.get("failed")]
    if not rows:
        raise configs.ConfigError(f"{workdir} has no finished trials in results.jsonl")
    trials = [sweep.Trial(r["id"], r["overrides"], configs.load_run_config(workdir / "trials" / r["id"])) for r in rows]
    by_id = {r["id"]: r for r in rows}
    per_token: dict[str, float] = {}  # program key -> FLOPs per token (one abstract model per program)
    model_flops = program_seconds = 0.0
    programs = _recorded_programs(workdir, trials) or sweep.group_trials(trials)
    for program in programs:
        key = sweep.program_key(program[0].cfg)
        if key not in per_token:
            try:
                per_token[key] = plan.config_flops_per_token(program[0].cfg)
            except AttributeError as e:  # a config.json written before fields the model now reads
                raise configs.ConfigError(f"{workdir}: trial {program[0].id}'s config.json has no field {e} (written "
                                          "by older code); its model cannot be rebuilt here") from None
        model_flops += sum(by_id[t.id]["tokens"] * per_token[key] for t in program)
        program_seconds += max(by_id[t.id]["wall_seconds"] for t in program)
    status = workdir / "status.json"
    recorded = json.loads(status.read_text()) if status.exists() else {}
    tokens = sum(r["tokens"] for r in rows)
    return {
        "label": workdir.name, "sweep": workdir.name, "trials": len(rows), "programs": len(programs), "tokens": tokens,
        "model_pflops": model_flops / 1e15, "program_seconds": program_seconds,
        "status_wall_seconds": (recorded["updated"] - recorded["started"]
                                if "started" in recorded and recorded.get("total") == len(rows) else None),
        "tokens_per_second": tokens / program_seconds,
        "sweep_mfu": model_flops / program_seconds / (flops.DATASHEET_PEAK_TFLOPS * 1e12),
        "sweep_mfu_measured_peak": model_flops / program_seconds / (flops.MEASURED_PEAK_TFLOPS * 1e12),
    }


def main(argv: list[str]) -> None:
    from absl import flags

    from benchmarks import results_table

    if len(argv) < 2:
        raise configs.ConfigError("give one or more sweep directories")
    rows = [sweep_cost(Path(d)) for d in argv[1:]]
    if flags.FLAGS.out:
        with open(flags.FLAGS.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(results_table.render_sweep_cost(rows))


if __name__ == "__main__":
    from absl import flags

    from launch import cli

    flags.DEFINE_string("out", "", "JSONL file the rows are appended to")
    cli.run(main)
