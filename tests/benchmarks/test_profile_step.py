"""benchmarks/profile_step.py: HLO parsing and op classification on synthetic input, and a real CPU profile."""

import pytest

from benchmarks import profile_step as ps
from experiments import base

# A hand-written module in the format of compiled.as_text(): source tables, one fusion without metadata whose
# fused op has some, a cuDNN attention custom call, a cuBLAS GEMM, the head, an optax update and a copy.
HLO = """HloModule jit_train_step, is_scheduled=true

FileNames
1 "/r/launch/train.py"
2 "/r/models/transformer.py"
3 "/r/models/attention.py"
4 "/r/models/layers.py"
5 "/site-packages/optax/_src/update.py"

FunctionNames
1 "build_program.<locals>.train_step"
2 "Transformer.__call__"
3 "Block.__call__"
4 "rope"
5 "Linear.__call__"
6 "lm_loss"
7 "apply_updates"
8 "SoftmaxKernel.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=1 end_line=1 column=1 end_column=2}
2 {file_name_id=2 function_name_id=2 line=1 end_line=1 column=1 end_column=2}
3 {file_name_id=2 function_name_id=3 line=1 end_line=1 column=1 end_column=2}
4 {file_name_id=3 function_name_id=4 line=1 end_line=1 column=1 end_column=2}
5 {file_name_id=4 function_name_id=5 line=1 end_line=1 column=1 end_column=2}
6 {file_name_id=2 function_name_id=6 line=1 end_line=1 column=1 end_column=2}
7 {file_name_id=5 function_name_id=7 line=1 end_line=1 column=1 end_column=2}
8 {file_name_id=3 function_name_id=8 line=1 end_line=1 column=1 end_column=2}

StackFrames
1 {file_location_id=1 parent_frame_id=0}
2 {file_location_id=2 parent_frame_id=2}
3 {file_location_id=3 parent_frame_id=3}
4 {file_location_id=4 parent_frame_id=4}
5 {file_location_id=5 parent_frame_id=4}
6 {file_location_id=5 parent_frame_id=3}
7 {file_location_id=6 parent_frame_id=2}
8 {file_location_id=7 parent_frame_id=2}
9 {file_location_id=8 parent_frame_id=4}

%fused_rope (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %multiply.1 = f32[8]{0} multiply(%p, %p), metadata={op_name="jit(train_step)/jvp()/mul" stack_frame_id=4}
}

ENTRY %main.1 (a: f32[8], b: f32[8,8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %b = f32[8,8]{1,0} parameter(1)
  %loop_multiply_fusion = f32[8]{0} fusion(%a), kind=kLoop, calls=%fused_rope
  %custom-call.1 = (bf16[8]{0}, u8[0]{0}) custom-call(%a), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(train_step)/dot_product_attention" stack_frame_id=9}
  %custom-call.2 = (f32[8,8]{1,0}, s8[4]{0}) custom-call(%b, %b), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(train_step)/dot_general" stack_frame_id=5}
  %custom-call.3 = (f32[8,8]{1,0}, s8[4]{0}) custom-call(%b, %b), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(train_step)/dot_general" stack_frame_id=6}
  %custom-call.4 = f32[8]{0} custom-call(%a), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(train_step)/pallas_call" stack_frame_id=4}
  %custom-call.5 = f32[8]{0} custom-call(%a), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(train_step)/pallas_call" stack_frame_id=9}
  %reduce.1 = f32[] reduce(%a), metadata={op_name="jit(train_step)/reduce_sum" stack_frame_id=7}
  %add.9 = f32[8]{0} add(%a, %a), metadata={op_name="jit(train_step)/add" stack_frame_id=8}
  ROOT %copy.3 = f32[8]{0} copy(%add.9)
}
"""


def trace(events):
    meta = [dict(ph="M", pid=1, name="process_name", args=dict(name="/host:CPU")),
            dict(ph="M", pid=7, name="process_name", args=dict(name="/device:GPU:0")),
            dict(ph="M", pid=7, tid=1, name="thread_name", args=dict(name="Stream #13(Compute)")),
            dict(ph="M", pid=7, tid=2, name="thread_name", args=dict(name="XLA Ops"))]
    return {"traceEvents": meta + events}


def ev(pid, hlo_op, dur, name=None, module="jit_train_step", tid=1):
    return dict(ph="X", pid=pid, tid=tid, ts=0, dur=dur, name=name or hlo_op, args=dict(hlo_op=hlo_op, hlo_module=module))


def test_parse_hlo_follows_stack_frames_to_the_outermost_caller():
    hlo = ps.parse_hlo(HLO)
    assert hlo.module == "jit_train_step"
    assert [fn for _, fn in hlo.instrs["multiply.1"].frames] == [
        "rope", "Block.__call__", "Transformer.__call__", "build_program.<locals>.train_step"]
    assert hlo.instrs["loop_multiply_fusion"].calls == ("fused_rope",)
    assert hlo.instrs["custom-call.2"].target == "__cublas$lt$matmul"


def test_each_op_lands_in_its_category():
    hlo = ps.parse_hlo(HLO)
    got = {name: ps.classify(hlo.instrs[name], hlo) for name in (
        "loop_multiply_fusion", "custom-call.1", "custom-call.2", "custom-call.3", "custom-call.4", "custom-call.5", "reduce.1", "add.9",
        "copy.3")}
    assert got == {
        "loop_multiply_fusion": "elementwise",  # RoPE: in models/attention.py, but not the attention kernel
        "custom-call.1": "attention",
        "custom-call.2": "gemm",  # a Linear inside a block
        "custom-call.3": "head_loss",  # a Linear outside every block: the head
        "custom-call.4": "elementwise",  # a Pallas (Triton) kernel outside attention, e.g. a fused norm
        "custom-call.5": "attention",  # a Pallas kernel inside the attention kernel's code (lssar_pallas)
        "reduce.1": "head_loss",
        "add.9": "optimizer",
        "copy.3": "other",
    }
    assert ps.classify(None, hlo, "sm90_xmma_gemm_bf16") == "gemm"
    assert ps.classify(None, hlo, "cudnn_generated_fort_native_sdpa") == "attention"
    assert ps.classify(None, hlo, "memcpy32_post") == "other"


def test_summary_uses_device_events_and_its_categories_sum_to_the_total():
    hlo = ps.parse_hlo(HLO)
    events = [ev(7, "custom-call.2", 30.0, "nvjet_tst_128x256"), ev(7, "custom-call.2", 10.0, "nvjet_tst_128x256"),
              ev(7, "custom-call.1", 20.0), ev(7, "loop_multiply_fusion", 5.0), ev(7, "add.9", 15.0),
              ev(7, "command_buffer.4", 8.0, "sm90_gemm_relu"),  # not in the HLO text: by kernel name
              ev(7, "custom-call.2", 40.0, tid=2),  # the derived "XLA Ops" line repeats the kernels: ignored
              ev(1, "custom-call.2", 999.0),  # the host-side launch of the same op: ignored
              ev(7, "fusion.1", 50.0, module="jit_init")]  # another module: ignored
    got = ps.op_events(trace(events), hlo.module)
    assert len(got) == 6
    s = ps.summarise(got, hlo, steps=2, top=3)
    cats = {c: v["ms_per_step"] for c, v in s["categories"].items()}
    assert cats == pytest.approx(dict(gemm=0.024, attention=0.010, elementwise=0.0025, head_loss=0.0,
                                      optimizer=0.0075, other=0.0))
    assert sum(cats.values()) == pytest.approx(s["total_ms_per_step"]) == pytest.approx(0.044)
    assert s["unmapped_fraction"] == pytest.approx(4 / 44)
    assert [r["hlo_op"] for r in s["top_ops"]] == ["custom-call.2", "custom-call.1", "add.9"]
    assert s["top_ops"][0]["calls_per_step"] == 1 and s["top_ops"][0]["kernel"] == "nvjet_tst_128x256"
    # by source: every op (not only the top 3), summed per (category, source); per category they add up
    for c, v in s["categories"].items():
        assert sum(r["ms_per_step"] for r in s["by_source"] if r["category"] == c) == pytest.approx(v["ms_per_step"])
    assert [r["ms_per_step"] for r in s["by_source"]] == sorted((r["ms_per_step"] for r in s["by_source"]), reverse=True)
    # a stream kernel without hlo_op is kept under its kernel name; without device timelines (the CPU backend)
    # the host events are the ops
    bare = dict(ph="X", pid=7, tid=1, ts=0, dur=2.0, name="memcpy_d2d", args={})
    assert ps.op_events(trace([bare]), hlo.module) == [dict(hlo_op="memcpy_d2d", kernel="memcpy_d2d", dur_us=2.0)]
    assert len(ps.op_events({"traceEvents": [ev(1, "add.9", 3.0)]}, hlo.module)) == 1


def test_a_real_cpu_profile_of_the_tiny_step_is_non_empty_and_adds_up(tmp_path):
    cfg = base.get_config("tiny")
    cfg.data.update(batch_size=4, seq_len=32)
    s = ps.profile(cfg, steps=2, warmup=1, trace_dir=str(tmp_path / "trace"))
    cats = {c: v["ms_per_step"] for c, v in s["categories"].items()}
    assert s["n_events"] > 0 and s["total_ms_per_step"] > 0
    assert sum(cats.values()) == pytest.approx(s["total_ms_per_step"])
    assert sum(v["fraction"] for v in s["categories"].values()) == pytest.approx(1.0)
    for c in ("gemm", "attention", "elementwise", "head_loss", "optimizer"):
        assert cats[c] > 0, (c, cats)
    assert s["unmapped_fraction"] < 0.05
    md = ps.render_markdown(s)
    assert "| gemm |" in md and s["top_ops"][0]["hlo_op"] in md and s["by_source"][0]["source"] in md
