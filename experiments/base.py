"""The base experiment: every config field of proxylab, documented, plus presets.

Usage:
    python -m launch.train --config=experiments/base.py:tiny --workdir=runs/a --config.optim.lr=3e-3

`get_config(arg)` returns a fully populated `ml_collections.ConfigDict`; `arg` selects a preset:

    tiny                 CPU seconds: 2 layers, d=64, seq 64, the embedded `classics` data.
    small                GPU minutes: the 9.4M ladder shape on `classics`, 2000 steps.
    2.4m ... 4.8b        the model ladder of Wortsman et al. (spec model-variants §6(b), our [D] shapes,
                         head_dim 64) with the paper's recipe: batch 256 x 512, vocab 32101, AdamW(0.9, 0.95,
                         1e-8), clip 1, warmup 5e3 + cosine to 1e-5 over 1e5 steps, independent WD 1e-4,
                         z-loss 1e-4, qk-layernorm on. Data defaults to `classics`; point `data.source=tfds`
                         at a prepared C4 to match the paper.

Other experiment files import `get_config` from here and change only what their study is about, so every field
exists (and is documented) exactly once: in this file. Unknown keys given on the command line are errors.
"""

from __future__ import annotations

import ml_collections

# (d_model, n_layers, n_heads) of the size ladder; N ~= 12 L d^2 non-embedding parameters (spec §6(b), [D]).
LADDER: dict[str, tuple[int, int, int]] = {
    "2.4m": (256, 3, 4),
    "9.4m": (512, 3, 8),
    "19m": (512, 6, 8),
    "42m": (768, 6, 12),
    "85m": (768, 12, 12),
    "151m": (1024, 12, 16),
    "302m": (1024, 24, 16),
    "1.2b": (2048, 24, 32),
    "4.8b": (4096, 24, 64),
}

PRESETS = ("tiny", "small", *LADDER)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config for preset `arg` (default "tiny")."""
    c = ml_collections.ConfigDict()

    # ---- model: the decoder-only LM (models/transformer.py) -------------------------------------------------
    c.model = m = ml_collections.ConfigDict()
    m.vocab_size = 512  # (int >= 2) output classes; every data source must emit ids < vocab_size
    m.d_model = 64  # (int >= 1) residual stream width d
    m.n_layers = 2  # (int >= 1) number of pre-LN blocks L
    m.n_heads = 2  # (int >= 1) attention heads H
    m.head_dim = 0  # (int >= 0) per-head width Dh; 0 means d_model // n_heads
    m.d_ff = 0  # (int >= 0) MLP hidden width; 0 means the model.mlp rule: gelu 4 * d_model, swiglu/smooth_swiglu swiglu_width
    m.attention = "softmax"  # (str: registry models.attention.ATTENTIONS) attention registry key (models/attention.py ATTENTIONS): softmax | ls | softplus | mlra
    m.attention_impl = "auto"  # (str: auto|xla|cudnn) kernel for softmax/ls attention: auto (cudnn on GPU with bf16/fp16, else xla) | xla | cudnn
    m.qk_norm = False  # (bool) per-head LayerNorm on queries and keys before RoPE (Wortsman et al. §3.1)
    m.allow_stacking = False  # (bool) permit two of qk_norm / attention=softplus / sigma_reparam at once (spec §9 refuses by default)

    m.ls = ml_collections.ConfigDict()  # attention=ls: Long-Short attention (Hajra 2025; spec model-variants §1)
    m.ls.n_global = 1  # (int >= 0) heads 0..n_global-1 attend to every earlier key; the others are local (paper: 1 of 12 [S])
    m.ls.window = 100  # (int >= 1) keys a local head sees, the query itself included (paper: span 100 [S]; inclusivity [D])

    m.mlra = ml_collections.ConfigDict()  # attention=mlra: low-rank Wq, Wk, Wv (Chung et al. 2024; spec §2) [U] -> [D]
    m.mlra.rank = 0  # (int >= 0) rank r of each factorised projection; 0 means head_dim // 2 [D]
    m.mlra.shared_latent = False  # (bool) False: per-head factors A_h B_h [D]; True: one shared latent A [d, r], B [r, H*Dh]
    m.mlra.init_std = 0.0  # (float >= 0) 0: both factors drawn like model.init's q/k/v kernel (the paper: GPT-2's N(0, 0.02²)); > 0: N(0, init_std²)

    m.softplus = ml_collections.ConfigDict()  # attention=softplus: LSSA / LSSAR (Gao & Spratling 2025; spec §4)
    m.softplus.reweight = True  # (bool) stage 2 re-weighting ReLU(A*N - O)^p (LSSAR); False = stage 1 only (LSSA)
    m.softplus.power = 15  # (int >= 1) re-weighting power p (15: best extrapolation, 3: best at the training length [S])
    m.softplus.eps = 1e-8  # (float > 0) added to each l1 row sum (keeps degenerate all-zero rows finite)
    m.softplus.query_chunk = 0  # (int >= 0) process queries in blocks of this many (long-context eval memory); 0 = all at once
    m.softplus.key_chunk = 0  # (int >= 0; 0 = off) keys in blocks of this many (models/attention.py lssar_blocked): no
    #                           [B, H, T, T] float32 weights in the train step, memory O(T·key_chunk)
    m.softplus.impl = "xla"  # (str: xla|pallas) xla: jnp (the chunks above); pallas: fused Pallas kernels (models/lssar_pallas.py),
    #                          no T × T arrays forward or backward; needs query_chunk = key_chunk = 0; one device (XLA does not
    #                          partition the call over a sharded mesh: no shard_map yet)

    m.sigma_reparam = False  # (bool) σReparam W -> (γ/σ(W)) W on every linear layer in the blocks (Zhai et al. 2023; spec §3)
    m.sigma_reparam_gamma_init = "sigma0"  # (str: sigma0|one) γ0: sigma0 = σ(W0), layer unchanged at init (official PyTorch) | one (official JAX)
    m.sigma_reparam_head = False  # (bool) also reparametrise the output head (with sigma_reparam, untied head only) [D: off]
    m.embed_scale = "none"  # (str: registry models.layers.EMBED_SCALES) embedding output (Spike No More, spec §7): none | scaled (x sqrt(d)) | layernorm
    m.mlp = "gelu"  # (str: registry models.mlp.MLPS) MLP registry key (models/mlp.py): gelu | swiglu | smooth_swiglu (Fishman et al. 2024; spec §5)
    m.norm = "layernorm"  # (str: registry models.layers.NORMS) normalisation registry key (models/layers.py): layernorm | rmsnorm; no biases either way
    m.norm_eps = 1e-6  # (float > 0) epsilon of every norm (Flax default, as in the paper)
    m.norm_impl = "auto"  # (str: auto|xla|pallas) kernels of every norm (model.norm, qk_norm, embed_scale=layernorm): auto = pallas on a
    #                       single GPU, else xla | xla = jnp fused by XLA | pallas = fused Pallas kernels (models/norm_pallas.py), one pass
    #                       forward and one backward; same parameters; one device only (XLA does not partition the call: no shard_map yet)
    m.rope_base = 10000.0  # (float > 1) RoPE wavelength base (rotate-half convention)
    m.tie_embeddings = False  # (bool) share the input embedding with the output head (the paper: untied)
    m.init = "fan_in"  # (str: registry models.layers.INITS) init registry key (models/layers.py): fan_in = embed N(0,1/d), kernels trunc-normal 1/sqrt(fan_in)
    #                    | small = every weight N(0, 2/(5d)), Wo and W2 further / sqrt(2L) (Spike No More, spec §7)
    #                    | gpt2 = every weight N(0, 0.02²), Wo and W2 N(0, 0.02²/(2L)) (GPT-2; the MLRA and LSSAR papers)
    m.dtype = "bfloat16"  # (str: float32|bfloat16|float16) matmul/activation dtype; softmax, logsumexp and norm statistics always run in float32
    m.param_dtype = "float32"  # (str: float32|bfloat16|float16) storage dtype of parameters and optimizer state
    m.logits_dtype = "float32"  # (str: float32|bfloat16|float16) dtype the output-head matmul writes; the loss always reduces in float32.
    #                             bfloat16 halves the traffic of the largest tensor [B, T, V] at ~3 digits of logit precision
    m.remat = False  # (bool) rematerialise each block in the backward pass (trade compute for activation memory)
    m.loss_chunk = 0  # (int >= 0; 0 = off) train/eval loss over this many positions at a time (x batch rows): the head's
    #                   float32 logits never exist for the whole batch; diagnostic passes use the full logits
    m.pad_vocab_to = 128  # (int >= 1; 1 = off) the loss's head matmul runs over V rounded up to this multiple (GPU
    #                       GEMM tiles), the padded logits masked to -inf; the head param stays [d, V]
    m.fused_ce = False  # (bool) the training loss's cross-entropy as one pass each way (models/transformer.py
    #                     `fused_token_ce`: an online log-sum-exp forward, one elementwise backward) instead of XLA's
    #                     reductions; same values up to summation order; off until the H200 measures it faster

    # stability levers of issue 16 (models/; each off by default and free when off: tests/models/test_levers.py)
    m.mup = False  # (bool) μParam (simple) (Wortsman et al. 2023): embedding init N(0, 1/mup_base_width), every
    #                matrix's LR x mup_base_width / d_model (optim/mup.py); needs init=fan_in and an untied head
    m.mup_base_width = 256  # (int >= 1) with mup: the width whose LR transfers; at d_model = mup_base_width μParam is
    #                         the baseline (paper: 256, the smallest width of its ladder)
    m.attn_softcap = 0.0  # (float >= 0; 0 = off) attention-logit soft-cap c·tanh(z/c) before the softmax (Gemma 2:
    #                       50); runs the explicit float32 attention, refused with attention_impl=cudnn
    m.final_softcap = 0.0  # (float >= 0; 0 = off) output-logit soft-cap c·tanh(y/c) before the loss (Gemma 2: 30)
    m.qk_clip = 0.0  # (float >= 0; 0 = off) QK-clip τ (Kimi K2): after each step, Wq and Wk of a head whose max logit
    #                  S in that step exceeded τ are scaled by sqrt(τ/S) each (softmax | ls; not with qk_norm)
    m.norm_position = "pre"  # (str: pre|peri) pre: x + F(LN(x)); peri: x + LN'(F(LN(x))), Peri-LN (Kim et al. 2025)
    m.position = "rope"  # (str: registry models.layers.POSITIONS) rope (in attention) | sinusoidal (Vaswani et al.
    #                      2017) | learned (GPT-2); sinusoidal and learned are added to the embedding output
    m.max_positions = 2048  # (int >= 1) with position=learned: rows of the table, the longest sequence it embeds
    m.embed_detach = 0.0  # (float >= 0, <= 1; 0 = off) Embed Detach α (GLM-130B: 0.1): x0 = α·e + (1-α)·sg(e), so
    #                       the embedding's gradient is scaled by α (the Spike No More comparison, spec §7)

    # SwiGLU / Smooth-SwiGLU and FP8 linears (Fishman et al. 2024; spec model-variants §5; models/mlp.py, models/fp8.py)
    m.swiglu_multiple_of = 256  # (int >= 1) swiglu width for d_ff=0: 8d/3 rounded up to this multiple (Llama; 11008 at d=4096)
    m.smooth_swiglu = ml_collections.ConfigDict()  # mlp=smooth_swiglu: the down-projection input's smoothing scale
    m.smooth_swiglu.mode = "channel"  # (str: channel|token) channel: s_i = 1/absmax per hidden channel, folded into W3 (the paper) |
    #                                   token: s_t = max_i |lin_t,i| per token, undone after W3 (the official code)
    m.fp8 = ml_collections.ConfigDict()  # FP8 matmuls: E4M3 x and W forward, E5M2 gradients backward (models/fp8.py)
    m.fp8.enabled = False  # (bool) True turns FP8 on for the layer groups in fp8.targets (the one switch)
    m.fp8.targets = "mlp,attn"  # (str list: registry models.fp8.TARGETS) comma-separated subset of mlp | attn (q, k, v, o) | head (official code: mlp,attn)
    m.fp8.scaling = "delayed"  # (str: registry models.fp8.SCALINGS) per-tensor scale from: delayed (max of the amax history) | current (this tensor's amax)
    m.fp8.amax_history = 1  # (int >= 1) delayed: steps of amax history (official code: one global batch = the previous step)
    m.fp8.margin = 0.0  # (float) scale = fmax / amax / 2^margin
    m.fp8.pow2_scale = True  # (bool) round each scale down to a power of two (official code), so scaling itself is exact
    m.fp8.e4m3_max = 448.0  # (float > 0) E4M3 clip bound and fmax: 448 (OCP e4m3fn, H100/H200) | 240 (Gaudi2, the paper's runs)
    m.fp8.saturate = True  # (bool) clip to ±fmax before the cast; False: overflow gives NaN (E4M3) / inf (E5M2)

    # ---- loss ---------------------------------------------------------------------------------------------------
    c.loss = ml_collections.ConfigDict()
    c.loss.z_loss = 1e-4  # (float >= 0) coefficient of mean(log^2 Z) (PaLM; Wortsman et al. §3.2); 0 turns it off

    # ---- optim: optim.make_optimizer -----------------------------------------------------------------------------
    c.optim = o = ml_collections.ConfigDict()
    o.name = "adamw"  # (str: registry optim.OPTIMIZERS) optimizer registry key (optim/__init__.py): adamw | sgd (momentum b1) | spam (SPAM paper: b2 0.999, eps 1e-6)
    o.lr = 1e-2  # (float > 0) peak learning rate (the value an LR sweep varies)
    o.b1 = 0.9  # (float >= 0, < 1) Adam beta1; sgd: the heavy-ball momentum m <- b1 m + g (torch SGD; 0 = plain SGD)
    o.b2 = 0.95  # (float >= 0, < 1) Adam beta2
    o.eps = 1e-8  # (float >= 0) Adam epsilon, outside the square root (optax/PyTorch placement; spam: E2 placement, spec §1)
    o.fp8_moments = False  # (bool) store Adam's m in E4M3 and v in E5M2 with per-tensor scales (spec §5; adamw, spam)
    o.weight_decay = 1e-4  # (float >= 0) decay coefficient lambda; its meaning depends on independent_wd
    o.independent_wd = True  # (bool) True: theta -= lambda * s_t * theta (follows the schedule, not scaled by peak lr);
    #                          False: coupled AdamW, theta -= lr_t * lambda * theta
    o.decay_all = False  # (bool) True: decay every parameter (nanodo); False: tensors with ndim >= 2 per layer (decay_mask)
    o.clip = 1.0  # (float >= 0) gradient-norm clipping threshold; 0 disables
    o.clip_mode = "global"  # (str: registry optim.CLIPPING) clipping registry key: global | component (per tensor / layer slice; Yang & Ma 2022)
    o.stacked_params = ""  # (str) regex on '/'-joined param paths whose leaves stack the layers on axis 0; "" = none
    o.schedule = "warmup_cosine"  # (str: registry optim.SCHEDULES) schedule registry key: warmup_cosine | constant | wsd | wsd_s | cyclic_cosine
    o.warmup_steps = 20  # (int >= 0) linear warmup from 0 to the peak lr; wsd*, cyclic_cosine: <= 1 is a fraction of cycle 1
    o.min_lr = 1e-5  # (float >= 0) final lr at the end of the cosine decay (warmup_cosine only)
    o.decay_steps = 0  # (int >= 0) steps at which the cosine reaches min_lr; 0 means train.steps (warmup_cosine only)

    o.wsd = ml_collections.ConfigDict()  # wsd | wsd_s | cyclic_cosine, Levanter semantics (spec optimizers §3)
    o.wsd.cycles = ()  # (tuple of int >= 1) wsd_s, cyclic_cosine: budgets (steps) where a decay ends, besides train.steps; e.g. (300, 600)
    o.wsd.decay = 0.1  # (float > 0) decay length of each cycle: <= 1.0 a fraction of that cycle, else steps
    o.wsd.rewarmup = 0.0  # (float >= 0) ramp from the minimum back to the peak after each budget; 0 = jump (fraction or steps)
    o.wsd.decay_shape = "linear"  # (str: registry optim.schedules.DECAY_SHAPES) linear | cosine | 1-sqrt
    o.wsd.min_lr_ratio = 0.1  # (float >= 0, <= 1) the decay ends at min_lr_ratio * lr

    o.spam = ml_collections.ConfigDict()  # SPAM (Huang et al. 2025; spec optimizers §1), optim.name = spam
    o.spam.threshold = 5000.0  # (float >= 0) spike threshold theta: g^2 > theta v is clipped to sign(g) sqrt(theta v); 0 = off
    o.spam.reset_interval = 500  # (int >= 1) momentum reset every this many updates (Delta T); 10**9 disables resets
    o.spam.reset_warmup = 150  # (int >= 0) cosine warmup of the update after each reset (W < reset_interval); not warmup_steps
    o.spam.no_clip_steps = 20  # (int >= 0) no spike clipping in the first N updates and the N updates from each reset on

    o.muon = ml_collections.ConfigDict()  # optim.name = muon (optim/muon.py): Muon on block matrices, Adam elsewhere
    o.muon.beta = 0.95  # (float >= 0, < 1) Muon's Nesterov momentum on the block matrices (b1/b2/eps: the Adam part)
    o.muon.ns_steps = 5  # (int >= 1) Newton–Schulz iterations of the orthogonalisation (Jordan et al. 2024)
    o.muon.rms_scale = 0.2  # (float >= 0) update x rms_scale·sqrt(max(fan_in, fan_out)): AdamW's RMS, so optim.lr is on
    #                         AdamW's scale (Liu et al. 2025); 0: Jordan's sqrt(max(1, fan_out/fan_in)) (lr ~0.02)
    o.muon.adam_lr_ratio = 1.0  # (float > 0) the Adam part's (embed, head, vectors) LR as a multiple of optim.lr

    o.agg = False  # (bool) AGG, adaptive gradient gating of rare-token rows of the output embedding (Yu et al. 2022;
    #                spec optimizers §7; optim/agg.py): the head's weight gradient, tied or untied
    o.agg_alpha = 0.03  # (float > 0, <= 1) AGG: a token is rare while its mean appearances per step (as a target) < alpha
    #                     (paper LM: 0.03; MT 0.08)
    o.agg_window = 100  # (int >= 1) AGG: steps of target counts averaged (paper: one epoch of updates) [D]

    o.skip_step = ml_collections.ConfigDict()  # skip updates on loss / grad-norm spikes (spec optimizers §10)
    o.skip_step.enabled = False  # (bool) wrap the optimizer in optim.skip_step (update then needs loss=CE without z-loss)
    o.skip_step.window = 128  # (int >= 2) history length of losses and pre-clip grad norms
    o.skip_step.sigma = 6.0  # (float > 0) skip when the loss or grad norm exceeds mean + sigma * std (Bessel) of the history

    # ---- data: launch/data.py ------------------------------------------------------------------------------------
    c.data = d = ml_collections.ConfigDict()
    d.source = "classics"  # (str: registry launch.data.SOURCES) data registry key: classics | synthetic | text | tfds | prepared
    d.seq_len = 64  # (int >= 1) tokens per training window (the model sees seq_len, predicts seq_len targets)
    d.batch_size = 16  # (int >= 1) global batch size in sequences (split over processes and the data/fsdp mesh axes)
    d.cache_dir = ""  # (str) where prepared token arrays and tokenizers live; "" means $PROXYLAB_CACHE or ~/.cache/proxylab
    d.eval_fraction = 0.05  # (float > 0, < 1) fraction of a prepared corpus held out for evaluation (classics, text)
    d.text_paths = ""  # (str) `text` source: comma-separated files or globs of UTF-8 text
    d.synthetic_kind = "bigram"  # (str: bigram|unigram) `synthetic` source: bigram (Zipfian Markov chain) | unigram (i.i.d. Zipfian)
    d.synthetic_zipf = 1.1  # (float > 0) `synthetic`: Zipf exponent of the next-token distributions (higher = more skewed)
    d.synthetic_tokens = 2_000_000  # (int >= 2) `synthetic`: length of the generated training stream
    d.synthetic_seed = 0  # (int >= 0) `synthetic`: seeds the generated language and its streams (train.seed orders windows)
    d.tfds_name = "c4/en:3.0.1"  # (str) `tfds`: builder name and version (a prepared array_record dataset)
    d.tfds_data_dir = ""  # (str) `tfds`: the data_dir that holds the prepared dataset
    d.tfds_train_split = "train"  # (str) `tfds`: split used for training windows
    d.tfds_eval_split = "validation"  # (str) `tfds`: split used for evaluation windows
    d.tfds_max_docs = 0  # (int >= 0) `tfds`: read at most this many documents per split (0 = all)
    d.tfds_text_key = "text"  # (str) `tfds`: the feature that holds each document's text
    d.prepared_dir = ""  # (str) `prepared`: a directory with tokens.npy + doc_ends.npy (+ tokenizer.json), e.g. a copied cache dir
    d.tokenizer = "bpe"  # (str) tokenizer for text sources: bpe (byte-level BPE trained locally) | a SentencePiece .model path

    # ---- train: launch/train.py ----------------------------------------------------------------------------------
    c.train = t = ml_collections.ConfigDict()
    t.steps = 300  # (int >= 1) optimizer steps
    t.seed = 0  # (int >= 0) seeds the init and the data order
    t.log_every = 10  # (int >= 1) write a metrics.jsonl row every this many steps (and at the last step)
    t.eval_every = 100  # (int >= 0; 0 = never) evaluate on held-out windows every this many steps (and at the last step)
    t.eval_batches = 4  # (int >= 1) held-out batches per evaluation
    t.diag_every = 0  # (int >= 0) compute the diagnostics of DESIGN §5 every this many steps; 0 = never
    t.ckpt_every = 100  # (int >= 0) save an orbax checkpoint every this many steps (and at the last step); 0 = only at the end
    t.keep_ckpts = 2  # (int >= 1) newest checkpoints kept on disk
    t.divergence_margin = 0.0  # (float >= 0) > 0: early stopping, also diverged once training CE > initial_loss + margin; 0 (the
    #                            paper's rule, Wortsman et al. §2): only a non-finite loss diverges (stops the run)
    t.progress = True  # (bool) print a progress line (step, loss, tokens/s) every log_every steps
    t.freq_buckets = 0  # (int >= 0) > 0: each eval also reports the eval CE in this many token-frequency buckets, by rank and
    #                     by equal mass (eval_loss_rank_bucket, eval_loss_mass_bucket; spec optimizers §2, §5); 0 = off
    t.spike_at_step = 0  # (int >= 0) testing/study hook: multiply the gradient of the step that reads batch number spike_at_step
    t.undertrained_tokens = 0  # (int >= 0) at the end of a run, summary.json's undertrained_tokens lists this many
    #                      (1-based; = that step unless a rewind advanced the data) by spike_scale to inject a gradient
    #                      spike from a "bad batch" (spec optimizers §10); the logged loss is unscaled; 0 = never
    t.spike_scale = 1000.0  # (float > 0) the factor of spike_at_step
    t.compilation_cache = ""  # (str) jax's persistent compilation cache: "" = <data.cache_dir or $PROXYLAB_CACHE or
    #                             ~/.cache/proxylab>/xla, a directory, or "off" (launch/loop.py enable_compilation_cache)

    t.rewind = ml_collections.ConfigDict()  # PaLM-style rewind on a loss spike (spec optimizers §10(a)): restart
    #                                         from an earlier checkpoint and skip ahead in the data (launch/train.py)
    t.rewind.enabled = False  # (bool) test each step's training CE for a spike and rewind on one (saves a step-0 checkpoint)
    t.rewind.window = 128  # (int >= 2) the spike test's history: the previous `window` CEs (optim.skip_step's statistic)
    t.rewind.sigma = 6.0  # (float > 0) a spike: CE > mean + sigma * std (Bessel) of the history, once max(2, window // 2) are known
    t.rewind.steps_back = 100  # (int >= 0) restore the newest checkpoint at or before (spike step - steps_back) (PaLM: ~100)
    t.rewind.skip_batches = 200  # (int >= 1) batches each rewind skips: step t then reads batch t + data_offset (PaLM: 200-500)
    t.rewind.max_rewinds = 5  # (int >= 1) after this many rewinds spikes are ignored and the divergence rule decides

    # memory of the presets (launch/memory.py estimates it; issue 10)
    t.diag_rows = 0  # (int >= 0) the explicit float32 attention diagnostics run forward-only on the batch's first rows; 0 = all
    t.max_members = 0  # (int >= 0) a batched group (trials differing only in optimizer scalars / train.seed) trains as programs
    #                    of at most this many members; 0 = the whole group as one program

    t.wandb = ml_collections.ConfigDict()  # Weights & Biases: one W&B run per trial, grouped by sweep (launch/metrics.py)
    t.wandb.project = ""  # (str) W&B project; "" = off (JSONL and TensorBoard are always written); needs the [wandb] extra
    t.wandb.entity = ""  # (str) W&B entity (user or team); "" = your default entity
    t.wandb.mode = "offline"  # (str: offline|online) offline: written under WANDB_DIR (default: the run directory)
    #                           for a later `wandb sync`; online: uploaded as the run goes

    # ---- mesh: launch/mesh.py ------------------------------------------------------------------------------------
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # (int >= -1, != 0; -1 = fill) data-parallel axis: members of a group first, else batch rows
    c.mesh.fsdp = 1  # (int >= -1, != 0; -1 = fill) parameter/optimizer-state sharding axis (batch is split over it too)
    c.mesh.tensor = 1  # (int >= -1, != 0; -1 = fill) tensor-parallel axis (heads, MLP hidden, vocab)
    c.mesh.members = 1  # (int >= -1, != 0; -1 = fill) device groups that hold whole members of a batched group

    # ---- optim (optim helper, issue 10): the WSD-S decay length per budget ------------------------------------------
    o.wsd.decay_of = "cycle"  # (str: registry optim.schedules.DECAY_OF) wsd_s: a fractional wsd.decay is of each cycle (Levanter) | budget: of the step B_k it ends at (= a WSD run of B_k)

    preset = arg or "tiny"
    if preset == "tiny":
        pass
    elif preset == "small":
        m.update(vocab_size=8192, d_model=512, n_layers=3, n_heads=8, qk_norm=True)
        d.update(seq_len=512, batch_size=64)
        o.update(lr=3e-3, warmup_steps=200)
        t.update(steps=2000, log_every=50, eval_every=500, eval_batches=8, ckpt_every=1000)
    elif preset in LADDER:
        width, depth, heads = LADDER[preset]
        m.update(vocab_size=32101, d_model=width, n_layers=depth, n_heads=heads, head_dim=64, qk_norm=True)
        d.update(seq_len=512, batch_size=256)
        o.update(lr=1e-2, warmup_steps=5000)
        t.update(steps=100_000, log_every=100, eval_every=5000, eval_batches=16, ckpt_every=5000)
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return c


def preset_name(arg: str | None, presets) -> str:
    """A study's preset from `get_config(arg)` / `get_sweep(arg)`: `arg`, or the first of `presets` when empty;
    an unknown one is a ValueError naming the choices."""
    preset = arg or presets[0]
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    return preset


def variant_study(preset: str, gpu_size: str, tiny_diag_every: int = 25) -> ml_collections.ConfigDict:
    """The shared base of the model-variant studies (experiments/{ls_attention,mlra,...}.py), before each study
    sets its own variant and its paper's recipe (each study's `RECIPE`): `tiny` is the CPU tiny model in float32
    (faster than bf16 on CPU) for 300 steps with diagnostics; `gpu` is the ladder size `gpu_size`, 10k steps after
    a 1k-step warmup. Neither has qk-layernorm, z-loss or weight decay: those are Wortsman et al.'s stabilisers,
    which none of the variant papers used and which shrink what they measure (z-loss bounds logit growth, weight
    decay on the embedding lowers TEV); a study whose paper decays weights sets its own."""
    if preset == "tiny":
        c = get_config("tiny")
        c.model.dtype = "float32"
        c.train.update(steps=300, diag_every=tiny_diag_every)
    elif preset == "gpu":
        c = get_config(gpu_size)
        c.optim.warmup_steps = 1000
        c.train.update(steps=10_000, eval_every=1000, ckpt_every=1000, diag_every=100)
    else:
        raise ValueError(f"unknown preset {preset!r}; choose tiny or gpu")
    c.model.qk_norm = False
    c.loss.z_loss = 0.0
    c.optim.weight_decay = 0.0
    return c
