"""Where the time of one train step goes: an XLA profile of the real jitted step, summarised by op and category.

    python -m benchmarks.profile_step --config=experiments/base.py:151m --out_json=p.json --out_md=p.md [--steps=5]

Compiles the train step exactly as benchmarks/throughput.py runs it (`compiled_step`), runs `--warmup` steps, then
`--steps` steps inside `jax.profiler.trace(trace_dir, create_perfetto_trace=True)`, and summarises the Perfetto
trace: every op event of the step's HLO module (on GPU the kernels on the device's timeline; on CPU the thunks on
the host threads) is joined by its `hlo_op` to the instruction of `compiled.as_text()` and classified by the jax
source the instruction's metadata points to (its stack frames), else by its opcode, else by its kernel name:

  optimizer    a frame in optim/ or optax (clipping, AdamW, the update)
  head_loss    lm_loss / chunked_lm_loss / token_ce, the output head's matmuls (dot_wide_out, a Linear outside the
               blocks, Transformer.head_matmul)
  attention    the attention kernel: SoftmaxKernel / LongShortKernel / SoftplusKernel code, cuDNN fmha custom
               calls, kernels named *fmha* / *flash* / *cudnn* / *sdpa*  (RoPE and qk-norm are elementwise)
  gemm         other dots: cuBLAS custom calls, fusions around a dot, kernels named *gemm* / *cublas* / *nvjet*
  elementwise  other fusions and arithmetic (norms, Pallas ones too; RoPE, GELU, residuals, casts, their gradients)
  other        data movement and everything unclassified (copies, the embedding gather, transposes)

Category times sum to the total device time of those events (concurrent kernels are summed, not merged).
On GPU the step runs without XLA command buffers (`--xla_gpu_enable_command_buffer=` unless XLA_FLAGS names the
flag): inside a CUDA graph the kernels lose their HLO attribution (openxla/xprof#3070).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time

if "xla_gpu_enable_command_buffer" not in os.environ.get("XLA_FLAGS", ""):  # before any backend starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer=").strip()

import jax  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import throughput  # noqa: E402
from launch import cli, configs  # noqa: E402

FLAGS = flags.FLAGS

CATEGORIES = ("gemm", "attention", "elementwise", "head_loss", "optimizer", "other")
ATTENTION_FUNCTIONS = ("SoftmaxKernel.", "LongShortKernel.", "SoftplusKernel.", "lssar_weights", "softmax_mix",
                       "causal_logits", "dot_product_attention")
HEAD_LOSS_FUNCTIONS = ("lm_loss", "token_ce", "dot_wide_out", "_dot_wide_out_fwd", "_dot_wide_out_bwd", "Embed.attend",
                       "chunked_lm_loss", "Transformer.head_matmul")
MOVEMENT_OPCODES = frozenset(
    "copy copy-start copy-done transpose dynamic-slice dynamic-update-slice slice concatenate gather scatter pad "
    "all-reduce all-gather reduce-scatter collective-permute all-to-all send recv infeed outfeed while conditional "
    "call rng rng-bit-generator iota constant parameter tuple get-tuple-element bitcast sort".split()
)


# ---- the HLO text: instructions with opcode, op_name, source frames and called computations ------------------

@dataclasses.dataclass
class Instr:
    name: str
    opcode: str
    op_name: str = ""
    target: str = ""  # custom-call target
    frames: tuple[tuple[str, str], ...] = ()  # (file, function), innermost first
    calls: tuple[str, ...] = ()


@dataclasses.dataclass
class Hlo:
    module: str
    instrs: dict[str, Instr]
    computations: dict[str, list[str]]


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\s([a-z][a-z0-9\-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def _tables(text: str) -> dict[str, dict[int, str]]:
    """The module's FileNames / FunctionNames / FileLocations / StackFrames sections: id -> rest of the line."""
    tables, current = {}, None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
        elif current is not None and re.match(r"^\d+ ", line):
            i, rest = line.split(" ", 1)
            current[int(i)] = rest
        elif current is not None and not line.strip():
            current = None
    return tables


def _frame_chain(frame_id: int, tables) -> tuple[tuple[str, str], ...]:
    """(file, function) of a stack frame and its callers. A frame's printed parent_frame_id p is frame p - 1
    (0: none): the ids of the printed table are 1-based, the stored parent ids 0-based-plus-one."""
    files, functions = tables.get("FileNames", {}), tables.get("FunctionNames", {})
    locations, frames = tables.get("FileLocations", {}), tables.get("StackFrames", {})
    chain, seen = [], set()
    while frame_id in frames and frame_id not in seen:
        seen.add(frame_id)
        fr = dict(re.findall(r"(\w+)=(\d+)", frames[frame_id]))
        loc = dict(re.findall(r"(\w+)=(\d+)", locations.get(int(fr.get("file_location_id", 0)), "")))
        chain.append((files.get(int(loc.get("file_name_id", 0)), "").strip('"'),
                      functions.get(int(loc.get("function_name_id", 0)), "").strip('"')))
        frame_id = int(fr.get("parent_frame_id", 0)) - 1
    return tuple(chain)


def parse_hlo(text: str) -> Hlo:
    """Instructions of every computation of an HLO module's text (`compiled.as_text()`)."""
    tables = _tables(text)
    module = re.match(r"HloModule\s+([\w.\-]+)", text)
    instrs, computations, current = {}, {}, None
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m and "=" not in line.split("{", 1)[0].split("(", 1)[0]:
            current = computations.setdefault(m.group(1), [])
            continue
        m = _INSTR.match(line)
        if not m or current is None:
            continue
        name, rest = m.groups()
        op = _OPCODE.search(" " + rest)
        if not op:
            continue
        meta = re.search(r"metadata=\{([^}]*)\}", rest)
        meta = meta.group(1) if meta else ""
        op_name = re.search(r'op_name="([^"]*)"', meta)
        source = re.search(r'source_file="([^"]*)"', meta)
        frame = re.search(r"stack_frame_id=(\d+)", meta)
        frames = _frame_chain(int(frame.group(1)), tables) if frame else ((source.group(1), ""),) if source else ()
        target = re.search(r'custom_call_target="([^"]*)"', rest)
        calls = re.findall(r"(?:calls|to_apply|body)=%?([\w.\-]+)", rest)
        instrs[name] = Instr(name, op.group(1), op_name.group(1) if op_name else "", target.group(1) if target else "",
                             frames, tuple(calls))
        current.append(name)
    return Hlo(module.group(1) if module else "", instrs, computations)


def _inner(instr: Instr, hlo: Hlo, seen=None) -> list[Instr]:
    """Every instruction of the computations `instr` calls (fusion bodies), recursively."""
    seen = set() if seen is None else seen
    out = []
    for comp in instr.calls:
        if comp in seen:
            continue
        seen.add(comp)
        for name in hlo.computations.get(comp, []):
            out.append(hlo.instrs[name])
            out.extend(_inner(hlo.instrs[name], hlo, seen))
    return out


# ---- classification ----------------------------------------------------------------------------------------

def classify_frames(frames) -> str | None:
    """The category the jax source of an op says, or None when the frames do not decide it."""
    files = [f for f, _ in frames]
    functions = [fn for _, fn in frames]
    if any("/optim/" in f or "optax" in f for f in files):
        return "optimizer"
    if any(fn.startswith(HEAD_LOSS_FUNCTIONS) for fn in functions):
        return "head_loss"
    in_model = "Transformer.__call__" in functions
    if in_model and "Block.__call__" not in functions and any(fn in ("Linear.__call__", "_dot") for fn in functions):
        return "head_loss"  # the untied head: a Linear under Transformer.__call__ outside every block
    if any(fn.startswith(ATTENTION_FUNCTIONS) for fn in functions):
        return "attention"
    return None


def classify_kernel_name(name: str) -> str | None:
    n = name.lower()
    if any(k in n for k in ("fmha", "flash", "cudnn", "sdpa")):
        return "attention"
    if any(k in n for k in ("gemm", "cublas", "nvjet", "cutlass", "xmma", "matmul")):
        return "gemm"
    return None


def _frames(instr: Instr, inner: list[Instr]) -> tuple:
    """An instruction's own source frames, else (a fusion without metadata) those of its first fused op that has."""
    return instr.frames or next((i.frames for i in inner if i.frames), ())


def classify(instr: Instr | None, hlo: Hlo | None, kernel_name: str = "") -> str:
    """A category of CATEGORIES for one HLO instruction (None: not in the HLO text) run as `kernel_name`."""
    if instr is None:
        return classify_kernel_name(kernel_name) or "other"
    inner = _inner(instr, hlo) if hlo is not None else []
    frames = _frames(instr, inner)
    target = instr.target.lower()
    if "fmha" in target or "cudnn" in target:
        return "attention"
    by_source = classify_frames(frames)
    if by_source:
        return by_source
    opcodes = {instr.opcode, *(i.opcode for i in inner)}
    if "dot" in opcodes or any(k in target for k in ("gemm", "matmul", "cublas")):
        return "gemm"
    by_kernel = classify_kernel_name(kernel_name)
    if by_kernel:
        return by_kernel
    if instr.opcode == "custom-call" and "triton" in target:
        return "elementwise"  # a Pallas kernel the source did not place: the fused norms (models/norm_pallas.py)
    if instr.opcode == "fusion" or instr.opcode not in MOVEMENT_OPCODES:
        if instr.opcode == "fusion" and inner and all(i.opcode in MOVEMENT_OPCODES for i in inner):
            return "other"  # a fused copy / transpose
        return "elementwise" if instr.opcode not in ("custom-call",) else "other"
    return "other"


# ---- the trace ---------------------------------------------------------------------------------------------

def load_trace(trace_dir: str) -> dict:
    """The newest perfetto_trace.json.gz under a jax.profiler trace directory."""
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(paths[-1]) as f:
        return json.load(f)


def op_events(trace: dict, module: str) -> list[dict]:
    """Complete events of the ops of HLO module `module`, each {"hlo_op", "kernel", "dur_us"}.

    With a device timeline (GPU): the kernels on its "Stream #…" threads (not the derived "XLA Ops" / "XLA
    Modules" lines, which repeat the same time); a kernel without an `hlo_op` argument keeps its kernel name (it
    is classified by that) and one of another module is dropped. Without one (the CPU backend): the host
    threads' op thunks, which carry `hlo_op` and `hlo_module`.
    """
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    meta = [e for e in events if e.get("ph") == "M"]
    device_pids = {e["pid"] for e in meta if e.get("name") == "process_name"
                   and "/device:" in str(e.get("args", {}).get("name", ""))}
    thread_names = {(e["pid"], e.get("tid")): str(e.get("args", {}).get("name", ""))
                    for e in meta if e.get("name") == "thread_name"}
    streams = {k for k, v in thread_names.items() if k[0] in device_pids and v.startswith("Stream")}
    complete = [e for e in events if e.get("ph") == "X"]
    if streams:
        chosen = [e for e in complete if (e.get("pid"), e.get("tid")) in streams
                  and str(e.get("args", {}).get("hlo_module", module)).startswith(module)]
    else:
        chosen = [e for e in complete if "hlo_op" in e.get("args", {})
                  and str(e["args"].get("hlo_module", "")).startswith(module)]
    return [{"hlo_op": e.get("args", {}).get("hlo_op", e.get("name", "")), "kernel": e.get("name", ""),
             "dur_us": float(e.get("dur", 0.0))} for e in chosen]


def summarise(events: list[dict], hlo: Hlo, steps: int, top: int = 25) -> dict:
    """Per-category and per-op device time (ms per step), categories summing to the total."""
    per_op = collections.defaultdict(lambda: {"us": 0.0, "count": 0, "kernels": collections.Counter()})
    for e in events:
        op = per_op[e["hlo_op"]]
        op["us"] += e["dur_us"]
        op["count"] += 1
        op["kernels"][e["kernel"]] += 1
    cats = dict.fromkeys(CATEGORIES, 0.0)
    rows = []
    for name, op in per_op.items():
        instr = hlo.instrs.get(name)
        kernel = op["kernels"].most_common(1)[0][0]
        cat = classify(instr, hlo, kernel)
        cats[cat] += op["us"]
        rows.append(dict(hlo_op=name, category=cat, ms_per_step=op["us"] / 1e3 / steps, calls_per_step=op["count"] / steps,
                         opcode=instr.opcode if instr else "", op_name=instr.op_name if instr else "",
                         source=_source(instr, hlo), kernel=kernel, in_hlo=instr is not None))
    total = sum(cats.values())
    rows.sort(key=lambda r: -r["ms_per_step"])
    by_source = collections.defaultdict(lambda: [0.0, 0])  # (category, source) -> [ms per step, ops]: every op
    for r in rows:
        entry = by_source[r["category"], r["source"] or f"({r['opcode'] or 'unmapped'})"]
        entry[0] += r["ms_per_step"]
        entry[1] += 1
    return dict(
        module=hlo.module, steps=steps, n_events=len(events), total_ms_per_step=total / 1e3 / steps,
        unmapped_fraction=sum(r["ms_per_step"] for r in rows if not r["in_hlo"]) / max(total / 1e3 / steps, 1e-12),
        categories={c: dict(ms_per_step=us / 1e3 / steps, fraction=us / total if total else 0.0) for c, us in cats.items()},
        top_ops=rows[:top],
        by_source=[dict(category=c, source=src, ms_per_step=ms, n_ops=n)
                   for (c, src), (ms, n) in sorted(by_source.items(), key=lambda kv: -kv[1][0])],
    )


def _source(instr: Instr | None, hlo: Hlo) -> str:
    """The innermost frame in the project (models/, optim/, launch/), as file:function."""
    for f, fn in _frames(instr, _inner(instr, hlo)) if instr else ():
        for root in ("models/", "optim/", "launch/"):
            if root in f:
                return f"{root}{f.split(root, 1)[1]}:{fn}"
    return ""


def render_markdown(summary: dict) -> str:
    lines = [f"Profile of `{summary.get('label') or summary['module']}`: {summary['steps']} steps, "
             f"{summary['total_ms_per_step']:.2f} ms of op time per step"
             + (f" ({summary['step_ms']:.2f} ms wall)" if "step_ms" in summary else "") + ".", "",
             "| category | ms / step | share |", "|---|---|---|"]
    for c, v in summary["categories"].items():
        lines.append(f"| {c} | {v['ms_per_step']:.2f} | {v['fraction']:.1%} |")
    if summary.get("by_source"):  # where a category's time comes from in the code: every op, summed by source
        lines += ["", "| source (innermost project frame, else the opcode) | category | ms / step | ops |",
                  "|---|---|---|---|"]
        lines += [f"| {r['source']} | {r['category']} | {r['ms_per_step']:.2f} | {r['n_ops']} |"
                  for r in summary["by_source"][:len(summary["top_ops"])]]
    lines += ["", "| op | category | ms / step | calls / step | source | kernel |", "|---|---|---|---|---|---|"]
    for r in summary["top_ops"]:
        lines.append(f"| `{r['hlo_op']}` | {r['category']} | {r['ms_per_step']:.3f} | {r['calls_per_step']:g} | "
                     f"{r['source'] or r['op_name'][-60:]} | {r['kernel'][:60]} |")
    return "\n".join(lines)


# ---- running it --------------------------------------------------------------------------------------------

def compiled_step(cfg, members: int = 1):
    """(compiled step, state, hparams, batches): the train step as benchmarks/throughput.py builds it (the loop's
    program over `members` members, donated state, random tokens on the device), compiled once ahead of time so
    that the HLO text is that of the executable that runs."""
    group, state, hparams, batches = throughput.step_setup(cfg, members)
    return group.step.lower(state, batches[0], hparams).compile(), state, hparams, batches


def profile(cfg, steps: int, warmup: int, trace_dir: str, top: int = 25, members: int = 1) -> dict:
    """Runs `warmup` then `steps` traced steps of `compiled_step(cfg, members)` and returns the summary."""
    step, state, hparams, batches = compiled_step(cfg, members)
    hlo = parse_hlo(step.as_text())
    for i in range(warmup):
        state, m = step(state, batches[i % 4], hparams)
    jax.block_until_ready(state)
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        t0 = time.perf_counter()
        for i in range(steps):
            state, m = step(state, batches[i % 4], hparams)
        jax.block_until_ready((state, m))
        wall = time.perf_counter() - t0
    summary = summarise(op_events(load_trace(trace_dir), hlo.module), hlo, steps, top)
    summary.update(step_ms=1e3 * wall / steps, device=jax.devices()[0].device_kind, trace_dir=trace_dir,
                   batch_size=cfg.data.batch_size, seq_len=cfg.data.seq_len, members=members)
    return summary


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (benchmarks.throughput defines --steps too)."""
    flags.DEFINE_integer("steps", 5, "profiled steps")
    flags.DEFINE_integer("warmup", 2, "unprofiled steps first (compilation, autotuning)")
    flags.DEFINE_string("trace_dir", "", "where jax.profiler writes the trace (default: a temporary directory)")
    flags.DEFINE_string("out_json", "", "write the summary as JSON here")
    flags.DEFINE_string("out_md", "", "write the summary as markdown here")
    flags.DEFINE_integer("top", 25, "ops listed in the top-ops table")
    flags.DEFINE_string("label", "", "a name for this profile, stored in the summary")
    flags.DEFINE_integer("members", 1, "profile the batched step of a group of this many members")


def main(argv) -> None:
    del argv
    cfg = FLAGS.config
    configs.validate(cfg, n_devices=jax.device_count())
    trace_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix="profile_step_")
    summary = dict(label=FLAGS.label, **profile(cfg, FLAGS.steps, FLAGS.warmup, trace_dir, FLAGS.top, FLAGS.members))
    md = render_markdown(summary)
    print(md, flush=True)
    if FLAGS.out_json:
        with open(FLAGS.out_json, "w") as f:
            json.dump(summary, f, indent=1)
    if FLAGS.out_md:
        with open(FLAGS.out_md, "w") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    define_flags()
    cli.run(main, config="file")
