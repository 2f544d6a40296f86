#!/usr/bin/env python3
"""model_ref.py: float32 reference logits of HF transformers' GptOssForCausalLM
for a gptoss checkpoint, written as a JSON fixture for test/unit/test_fixtures.c.

usage: python3 model_ref.py CHECKPOINT_DIR OUT_JSON [--device cpu|cuda]
                            [--config-name NAME] [--seed N] [--allow-mismatch]
                            [--n-prompts N] [--prompt-lens 5,17,40] [--greedy N]
                            [--dtype float32|bfloat16] [--bf16-experts]
                            [--skip-float64-check] [--top-only]

CHECKPOINT_DIR is normally a `gptoss synth --preset NAME --seed 0` directory; the
fixture records NAME (--config-name, else config.json's "gptoss_synth_preset",
else taken from OUT_JSON's name: model_tiny_odd.json -> tiny-odd) so that the C
test can synthesise the same checkpoint.

What it does, defensively, printing what it finds at every step:
  1. loads the checkpoint with GptOssForCausalLM.from_pretrained(...,
     quantization_config=Mxfp4Config(dequantize=True), dtype float32,
     attn_implementation="eager"), with TF32 disabled; on cuda straight onto
     the device (device_map), so a 20b model is never held twice;
  2. checks that it really runs float32 + eager, and that every parameter equals
     the file's tensor (dense bf16 widened; MXFP4 experts dequantized here
     independently, expert by expert, in either orientation transformers may
     store them), so a silently skipped or mis-mapped tensor cannot go unnoticed;
  3. runs a second, self-contained float64 forward pass written from the model
     description (docs/architecture.md, Forward pass) on the raw file tensors and requires HF to
     agree with it (exit 3 otherwise, unless --allow-mismatch); skipped for
     models of 300M parameters or more and with --skip-float64-check;
  4. for each prompt (fixed pseudo-random ids, lengths 5, 17, 40: longer than
     the sliding window) records the argmax at every position, top-10 (id,
     logit) at every position, logsumexp per position, logits at 64 fixed
     vocabulary indices for every position, and a greedy continuation of 12
     tokens (a manual argmax loop over full forward passes, so no EOS logic).

For a full-size (20b-shape) checkpoint, e.g.
    --config-name 20b --n-prompts 4 --prompt-lens 160 --greedy 32
    --skip-float64-check --top-only --device cuda
--top-only replaces the per-position top-10 and probe logits by the top-2 gap
(margin) at every position, keeping argmax and logsumexp at every position and
the top-10 of the last position, so a comparison can count agreement at
positions with a clear margin separately.  Float32 weights of 20b take 84 GB:
on a smaller GPU, --bf16-experts keeps the dequantized expert weights in bf16
(exact: every MXFP4 value is a bf16 value) and widens one layer's experts to
float32 for the duration of its forward call, so all arithmetic stays float32;
--dtype bfloat16 instead runs HF entirely in bf16 (a coarser reference: state
the tolerance).  Non-default options, the dtype and the timings are recorded
in the fixture.
"""
import argparse
import glob
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time

FP4_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
PROMPT_LENGTHS = [5, 17, 40]
N_PROBES = 64
N_GREEDY = 12
TOP = 10


def log(msg):
    print("[model_ref] " + msg, flush=True)


def die(msg, code=1):
    print("[model_ref] ERROR: " + msg, file=sys.stderr, flush=True)
    sys.exit(code)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out_json")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--config-name", default=None)
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the prompt ids and probe indices (default 0)")
    ap.add_argument("--synth-seed", type=int, default=0,
                    help="seed the checkpoint was synthesised with (recorded; default 0)")
    ap.add_argument("--allow-mismatch", action="store_true",
                    help="write the fixture even if HF disagrees with the spec forward pass")
    ap.add_argument("--n-prompts", type=int, default=None,
                    help="number of prompts (default: one per --prompt-lens entry; "
                         "the lengths repeat when there are more prompts)")
    ap.add_argument("--prompt-lens", default=",".join(map(str, PROMPT_LENGTHS)),
                    help="comma list of prompt lengths (default %s)" % ",".join(map(str, PROMPT_LENGTHS)))
    ap.add_argument("--greedy", type=int, default=N_GREEDY,
                    help="greedy continuation length (default %d)" % N_GREEDY)
    ap.add_argument("--skip-float64-check", action="store_true",
                    help="skip the float64 spec forward pass (far too slow for 20b)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="HF compute dtype (default float32)")
    ap.add_argument("--bf16-experts", action="store_true",
                    help="float32 compute with the expert weights held in bf16 and widened per layer")
    ap.add_argument("--top-only", action="store_true",
                    help="per position only argmax, top-2 margin and logsumexp; top-10 of the last")
    args = ap.parse_args()
    try:
        args.lens = [int(v) for v in args.prompt_lens.split(",")]
    except ValueError:
        die("--prompt-lens must be a comma list of integers, not %r" % args.prompt_lens)
    if not args.lens or min(args.lens) < 1:
        die("--prompt-lens needs lengths >= 1")
    if args.n_prompts is None:
        args.n_prompts = len(args.lens)
    if args.n_prompts < 1 or args.greedy < 0:
        die("--n-prompts must be >= 1 and --greedy >= 0")
    if args.bf16_experts and args.dtype != "float32":
        die("--bf16-experts is for float32 compute; it makes no sense with --dtype %s" % args.dtype)
    defaults = ap.parse_args([args.checkpoint, args.out_json])
    args.changed = {k: getattr(args, k) for k in (
        "seed", "n_prompts", "prompt_lens", "greedy", "skip_float64_check", "dtype",
        "bf16_experts", "top_only") if getattr(args, k) != getattr(defaults, k)}
    if "n_prompts" in args.changed and args.n_prompts == len(args.lens):
        del args.changed["n_prompts"]
    return args


def config_name_for(args, cfg):
    if args.config_name:
        return args.config_name
    if isinstance(cfg.get("gptoss_synth_preset"), str):
        return cfg["gptoss_synth_preset"]
    m = re.match(r"model_(.+)\.json$", os.path.basename(args.out_json))
    if m:
        return m.group(1).replace("_", "-")
    die("cannot tell the synth preset: pass --config-name")


def setup_torch(device):
    import torch
    if device.startswith("cuda") and not torch.cuda.is_available():
        die("--device %s asked but torch sees no CUDA device" % device)
    # IEEE float32 everywhere: no TF32 in matmuls or convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    for obj, attr in ((getattr(torch.backends.cuda, "matmul", None), "fp32_precision"),
                      (torch.backends.cudnn, "fp32_precision")):
        if obj is not None and hasattr(obj, attr):
            try:
                setattr(obj, attr, "ieee")
            except Exception as e:  # older/newer API spelling
                log("note: could not set %s: %s" % (attr, e))
    torch.manual_seed(0)
    return torch


def read_config(ckpt):
    path = os.path.join(ckpt, "config.json")
    if not os.path.exists(path):
        die("%s not found" % path)
    with open(path) as f:
        return json.load(f)


def prepared_checkpoint(ckpt, cfg):
    """HF only treats *_blocks/*_scales as MXFP4 when config.json says so; add it if absent."""
    if isinstance(cfg.get("quantization_config"), dict) and \
            cfg["quantization_config"].get("quant_method") == "mxfp4":
        return ckpt, None
    log("config.json has no mxfp4 quantization_config: using a patched copy of the config")
    tmp = tempfile.mkdtemp(prefix="model_ref_")
    for name in os.listdir(ckpt):
        if name != "config.json":
            os.symlink(os.path.abspath(os.path.join(ckpt, name)), os.path.join(tmp, name))
    patched = dict(cfg)
    patched["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                   "model.embed_tokens", "lm_head"]}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(patched, f, indent=2)
    return tmp, tmp


class FileTensors:
    """The checkpoint's tensors by name, read from the mapped safetensors files
    on demand (a 20b checkpoint is never held in memory all at once)."""

    def __init__(self, ckpt):
        from safetensors import safe_open
        files = sorted(glob.glob(os.path.join(ckpt, "*.safetensors")))
        if not files:
            die("no *.safetensors in %s" % ckpt)
        self.where = {}
        for fn in files:
            handle = safe_open(fn, framework="pt")
            for name in handle.keys():
                self.where[name] = handle
        log("found %d tensors in %d file(s)" % (len(self.where), len(files)))

    def __getitem__(self, name):
        return self.where[name].get_tensor(name)

    def __contains__(self, name):
        return name in self.where

    def names(self):
        return sorted(self.where)

    def numel(self, name):
        return math.prod(self.where[name].get_slice(name).get_shape())


def dequant_mxfp4(blocks, scales, torch):
    """[E, R, B, 16] uint8 + [E, R, B] uint8 -> float64 [E, R, B*32] (docs/architecture.md, MXFP4)."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float64, device=blocks.device)
    b = blocks.to(torch.int64)
    lo = lut[b & 15]
    hi = lut[b >> 4]
    vals = torch.stack([lo, hi], dim=-1).reshape(*blocks.shape[:-1], 32)
    vals = torch.ldexp(vals, (scales.to(torch.int64) - 127).unsqueeze(-1))
    return vals.reshape(blocks.shape[0], blocks.shape[1], -1)


def load_hf_model(path, args, torch):
    """The HF model on args.device, in the dtype args ask for (see the header)."""
    import transformers
    from transformers import GptOssForCausalLM
    try:
        from transformers import Mxfp4Config
    except ImportError:
        die("this transformers (%s) has no Mxfp4Config" % transformers.__version__)
    load_dtype = torch.bfloat16 if args.dtype == "bfloat16" or args.bf16_experts else torch.float32
    kwargs = dict(quantization_config=Mxfp4Config(dequantize=True),
                  attn_implementation="eager", output_loading_info=True)
    if args.device != "cpu":
        kwargs["device_map"] = args.device   # load onto the device directly: never two copies

    def load(**kw):
        try:
            return GptOssForCausalLM.from_pretrained(path, dtype=load_dtype, **kw)
        except TypeError as e:
            log("from_pretrained(dtype=) failed (%s); retrying with torch_dtype=" % e)
            return GptOssForCausalLM.from_pretrained(path, torch_dtype=load_dtype, **kw)

    try:
        model, info = load(**kwargs)
    except (ImportError, ValueError) as e:
        if "device_map" not in kwargs:
            raise
        log("from_pretrained(device_map=%r) failed (%s: %s); loading on the host, then moving"
            % (args.device, type(e).__name__, e))
        del kwargs["device_map"]
        model, info = load(**kwargs)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        vals = info.get(key) if isinstance(info, dict) else None
        if vals:
            log("loading info %s: %s" % (key, sorted(map(str, vals))[:20]))
    if any(p.device.type != torch.device(args.device).type for p in model.parameters()):
        model = model.to(args.device)
    experts = expert_modules(model)
    if args.bf16_experts:
        hold_experts_in_bf16(model, experts, torch)
    elif args.dtype == "float32":
        model = model.float()
    return model.eval(), experts


def expert_modules(model):
    """The modules holding each layer's expert weights (model.layers.N.mlp.experts)."""
    found = [m for n, m in model.named_modules() if n.endswith(".mlp.experts")]
    if not found:
        die("no model.layers.*.mlp.experts modules in %s" % type(model).__name__)
    return found


def hold_experts_in_bf16(model, experts, torch):
    """float32 compute on bf16-held experts: every other parameter becomes float32;
    each experts module widens its parameters to float32 when called and puts the
    bf16 tensors back when it returns, so only one layer's experts (3.2 GB for 20b)
    exist in float32 at a time.  Widening bf16 is exact."""
    held_ids = {id(p) for m in experts for p in m.parameters()}
    for p in model.parameters():
        if id(p) not in held_ids:
            p.data = p.data.float()
    seen_out = set()

    def widen(module, inputs):
        module._bf16_held = {}
        for pn, p in module.named_parameters(recurse=False):
            module._bf16_held[pn] = p.data
            p.data = p.data.float()

    def restore(module, inputs, out):
        for pn, p in module.named_parameters(recurse=False):
            p.data = module._bf16_held.pop(pn)
        if isinstance(out, torch.Tensor) and out.dtype not in seen_out:
            seen_out.add(out.dtype)
            log("experts compute in %s (weights held in bf16)" % str(out.dtype).replace("torch.", ""))
            if out.dtype != torch.float32:
                die("widened experts still returned %s" % out.dtype)

    for m in experts:
        m.register_forward_pre_hook(widen)
        m.register_forward_hook(restore)
    log("float32 compute with expert weights held in bf16 (%d experts modules)" % len(experts))


def check_dtypes(model, experts, args, torch):
    """Parameters in the dtype asked for (experts possibly bf16-held), eager attention."""
    compute = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    held = torch.bfloat16 if args.bf16_experts else compute
    held_ids = {id(p) for m in experts for p in m.parameters()}
    # in bf16, transformers keeps the RMSNorm weights (_keep_in_fp32_modules) in float32
    def allowed(p):
        return (held,) if id(p) in held_ids else (compute, torch.float32)

    bad = ["%s (%s)" % (n, p.dtype) for n, p in model.named_parameters() if p.dtype not in allowed(p)]
    if args.dtype == "bfloat16":
        kept = [n for n, p in model.named_parameters() if p.dtype == torch.float32]
        if kept:
            log("bfloat16 run: %d parameters kept in float32 by transformers (%s, ...)" % (len(kept), kept[0]))
    bad += ["%s (%s)" % (n, b.dtype) for n, b in model.named_buffers()
            if b.is_floating_point() and b.dtype not in (compute, torch.float32)]
    if bad:
        die("tensors not in %s: %s" % (args.dtype, bad[:10]))
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "eager":
        die("attention implementation is %r, not eager" % impl)
    log("%s parameters%s and eager attention: ok; experts implementation %s" % (
        args.dtype, " (experts held in bf16)" if args.bf16_experts else "",
        getattr(model.config, "_experts_implementation", "(this transformers has no choice)")))


def same_values(got, want, torch):
    """Exact equality of two tensors, compared in float64 a slice at a time."""
    if tuple(got.shape) != tuple(want.shape):
        return False
    if got.dim() == 0:
        return bool(got.to(torch.float64) == want.to(got.device, torch.float64))
    rows = max(1, (1 << 24) // max(1, got[0].numel()))
    for r in range(0, got.shape[0], rows):
        if not torch.equal(got[r:r + rows].to(torch.float64),
                           want[r:r + rows].to(got.device, torch.float64)):
            return False
    return True


def experts_match(got, blocks, scales, torch):
    """None when got ([E, out, in] or [E, in, out]) equals the dequantized MXFP4
    tensor in one orientation for all experts, compared one expert at a time;
    else what differs."""
    candidates = {"as is", "transposed"}
    for e in range(blocks.shape[0]):
        want = dequant_mxfp4(blocks[e:e + 1].to(got.device), scales[e:e + 1].to(got.device), torch)[0]
        g = got[e].to(torch.float64)
        fits = set()
        if g.shape == want.shape and torch.equal(g, want):
            fits.add("as is")
        if g.shape == want.T.shape and torch.equal(g, want.T):
            fits.add("transposed")
        candidates &= fits
        if not candidates:
            return "expert %d (shape %s vs file %s)" % (e, tuple(g.shape), tuple(want.shape))
    return None


def check_weights(model, tensors, torch):
    """Every file tensor must equal the model's parameter (experts dequantized here)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    checked, problems = 0, []
    for name in tensors.names():
        if name.endswith("_scales"):
            continue
        if name.endswith("_blocks"):
            base = name[:-len("_blocks")]
            got = params.get(base)
            if got is None:
                problems.append("%s: no parameter %s in the model" % (name, base))
                continue
            why = experts_match(got, tensors[name], tensors[base + "_scales"], torch)
            if why:
                problems.append("%s: dequantized experts differ: %s" % (base, why))
            else:
                checked += 1
            continue
        got = params.get(name)
        if got is None:
            problems.append("%s: not a parameter of the model" % name)
            continue
        if not same_values(got, tensors[name], torch):
            problems.append("%s: differs from the file" % name)
        else:
            checked += 1
    covered = set()
    for name in tensors.names():
        covered.add(name[:-len("_blocks")] if name.endswith("_blocks") else name)
    for n in params:
        if n not in covered and not n.endswith("_scales"):
            problems.append("%s: model parameter with no tensor in the file (randomly initialised?)" % n)
    if problems:
        for p in problems[:30]:
            log("weight check: " + p)
        die("%d weight problem(s): the model did not load the checkpoint faithfully" % len(problems))
    log("weight check: %d tensors identical to the file" % checked)
    return checked


def yarn(cfg, torch):
    """inv_freq [D/2] (float64) and concentration, docs/architecture.md (RoPE and YaRN) with HF's clamp and truncate rule."""
    d = cfg["head_dim"]
    theta = float(cfg["rope_theta"])
    rs = cfg.get("rope_scaling") or {}
    factor = float(rs.get("factor", 1.0))
    i = torch.arange(d // 2, dtype=torch.float64)
    base = theta ** (2 * i / d)
    if factor <= 1.0:
        return 1.0 / base, 1.0
    l0 = float(rs.get("original_max_position_embeddings", cfg["max_position_embeddings"]))
    bf, bs = float(rs.get("beta_fast", 32.0)), float(rs.get("beta_slow", 1.0))
    low = d * math.log(l0 / (bf * 2 * math.pi)) / (2 * math.log(theta))
    high = d * math.log(l0 / (bs * 2 * math.pi)) / (2 * math.log(theta))
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    ramp = ((i - low) / (high - low)).clamp(0, 1)
    inv = (1.0 / (factor * base)) * ramp + (1.0 / base) * (1 - ramp)
    return inv, 0.1 * math.log(factor) + 1.0


def spec_forward(tensors, cfg, ids, torch):
    """float64 logits [n, V] from the file tensors, written from docs/architecture.md."""
    f64 = lambda name: tensors[name].to(torch.float64)
    H, D = cfg["hidden_size"], cfg["head_dim"]
    Hq, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    K = cfg.get("num_experts_per_tok", cfg.get("experts_per_token"))
    eps = float(cfg.get("rms_norm_eps", 1e-5))
    limit = float(cfg.get("swiglu_limit", 7.0))
    window = cfg["sliding_window"]
    types = cfg.get("layer_types") or ["sliding_attention" if l % 2 == 0 else "full_attention"
                                       for l in range(cfg["num_hidden_layers"])]
    n = len(ids)
    inv, m = yarn(cfg, torch)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = m * torch.cos(ang), m * torch.sin(ang)

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def rope(x):  # [n, heads, D]
        a, b = x[..., :D // 2], x[..., D // 2:]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)

    x = f64("model.embed_tokens.weight")[torch.tensor(ids)]
    pos = torch.arange(n)
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        t = rms(x, f64(p + "input_layernorm.weight"))
        q = t @ f64(p + "self_attn.q_proj.weight").T + f64(p + "self_attn.q_proj.bias")
        k = t @ f64(p + "self_attn.k_proj.weight").T + f64(p + "self_attn.k_proj.bias")
        v = t @ f64(p + "self_attn.v_proj.weight").T + f64(p + "self_attn.v_proj.bias")
        q, k, v = rope(q.view(n, Hq, D)), rope(k.view(n, Hkv, D)), v.view(n, Hkv, D)
        g = torch.arange(Hq) // (Hq // Hkv)
        z = torch.einsum("phd,jhd->hpj", q, k[:, g, :]) / math.sqrt(D)
        allowed = pos[None, :] <= pos[:, None]
        if types[l] == "sliding_attention":
            allowed &= pos[None, :] > pos[:, None] - window
        z = z.masked_fill(~allowed[None], float("-inf"))
        sinks = f64(p + "self_attn.sinks")[:, None, None].expand(Hq, n, 1)
        zz = torch.cat([z, sinks], dim=-1)
        a = torch.softmax(zz - zz.max(-1, keepdim=True).values, dim=-1)[..., :-1]
        o = torch.einsum("hpj,jhd->phd", a, v[:, g, :]).reshape(n, Hq * D)
        x = x + o @ f64(p + "self_attn.o_proj.weight").T + f64(p + "self_attn.o_proj.bias")
        t = rms(x, f64(p + "post_attention_layernorm.weight"))
        logits = t @ f64(p + "mlp.router.weight").T + f64(p + "mlp.router.bias")
        w1 = dequant_mxfp4(tensors[p + "mlp.experts.gate_up_proj_blocks"],
                           tensors[p + "mlp.experts.gate_up_proj_scales"], torch)
        w2 = dequant_mxfp4(tensors[p + "mlp.experts.down_proj_blocks"],
                           tensors[p + "mlp.experts.down_proj_scales"], torch)
        b1, b2 = f64(p + "mlp.experts.gate_up_proj_bias"), f64(p + "mlp.experts.down_proj_bias")
        moe = torch.zeros_like(x)
        for r in range(n):
            order = sorted(range(logits.shape[1]), key=lambda e: (-float(logits[r, e]), e))[:K]
            sel = torch.tensor(order)
            wts = torch.softmax(logits[r, sel], dim=0)
            for e, w in zip(order, wts):
                h = w1[e] @ t[r] + b1[e]
                gate, up = h[0::2].clamp(max=limit), h[1::2].clamp(-limit, limit)
                act = gate * torch.sigmoid(1.702 * gate) * (up + 1)
                moe[r] += w * (w2[e] @ act + b2[e])
        x = x + moe
    t = rms(x, f64("model.norm.weight"))
    return t @ f64("lm_head.weight").T


def top_sorted(row_np, k):
    """Top k (id, logit), logit descending then id ascending."""
    import numpy as np
    order = np.lexsort((np.arange(row_np.shape[0]), -row_np.astype(np.float64)))[:k]
    return [[int(i), float(row_np[i])] for i in order]


def first_argmax(row_np):
    import numpy as np
    return int(np.argmax(row_np))  # numpy returns the first maximal index


def prompt_entry(model, ids, probe_ids, args, torch):
    """Logits of one prompt in one forward pass: the fixture entry (without greedy)
    and the logits [n, V] as float32 on the host."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=args.device),
                       use_cache=False).logits[0].float().cpu()
    lg = logits.numpy()
    n = len(ids)
    lse = [float(torch.logsumexp(logits[p].double(), 0)) for p in range(n)]
    if args.top_only:
        top2 = torch.topk(logits, 2, dim=-1).values.double()
        entry = {
            "ids": ids,
            "argmax": [first_argmax(lg[p]) for p in range(n)],
            "margin": [float(top2[p, 0] - top2[p, 1]) for p in range(n)],
            "lse": lse,
            "top10_last": top_sorted(lg[n - 1], TOP),
            "lse_last": lse[-1],
        }
    else:
        entry = {
            "ids": ids,
            "argmax": [first_argmax(lg[p]) for p in range(n)],
            "top10": [top_sorted(lg[p], TOP) for p in range(n)],
            "lse": lse,
            "probe_ids": probe_ids,
            "probe_logits": [[float(lg[p][i]) for i in probe_ids] for p in range(n)],
        }
        entry["top10_last"] = entry["top10"][-1]
        entry["lse_last"] = entry["lse"][-1]
    return entry, logits


def greedy(model, ids, count, args, torch):
    """count greedy tokens after ids: a manual argmax loop over full forward passes."""
    seq = list(ids)
    for _ in range(count):
        with torch.no_grad():
            last = model(input_ids=torch.tensor([seq], device=args.device),
                         use_cache=False).logits[0, -1].float().cpu().numpy()
        seq.append(first_argmax(last))
    return seq[len(ids):]


def main():
    args = parse_args()
    torch = setup_torch(args.device)
    import transformers
    log("torch %s, transformers %s, device %s" % (torch.__version__, transformers.__version__, args.device))
    seconds = {}
    t0 = time.time()

    cfg = read_config(args.checkpoint)
    name = config_name_for(args, cfg)
    vocab = cfg["vocab_size"]
    rs = cfg.get("rope_scaling") or {}
    log("config %s: hidden %d, layers %d, heads %d/%d, head_dim %d, experts %d top-%s, "
        "intermediate %d, window %d, vocab %d, rope %s" % (
            name, cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["head_dim"], cfg["num_local_experts"],
            cfg.get("num_experts_per_tok"), cfg["intermediate_size"], cfg["sliding_window"],
            vocab, json.dumps(rs)))
    if rs.get("original_max_position_embeddings") and rs.get("factor"):
        hf_factor = cfg["max_position_embeddings"] / rs["original_max_position_embeddings"]
        if abs(hf_factor - rs["factor"]) > 1e-9:
            log("WARNING: HF derives the YaRN factor as max_position_embeddings / "
                "original_max_position_embeddings = %g, but rope_scaling.factor = %g; "
                "the engine uses the latter, so expect a mismatch" % (hf_factor, rs["factor"]))

    path, tmp = prepared_checkpoint(args.checkpoint, cfg)
    try:
        model, experts = load_hf_model(path, args, torch)
    except Exception as e:
        die("GptOssForCausalLM.from_pretrained failed: %s: %s" % (type(e).__name__, e))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds["load"] = round(time.time() - t0, 1)
    if args.device.startswith("cuda"):
        log("loaded in %.1f s; %.1f GiB on the GPU" % (seconds["load"], torch.cuda.memory_allocated() / 2**30))
    check_dtypes(model, experts, args, torch)
    rot = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rot is not None:
        inv, m = yarn(cfg, torch)
        hf_inv = rot.inv_freq.detach().to("cpu", torch.float64)
        hf_m = float(getattr(rot, "attention_scaling", float("nan")))
        rel = float(((hf_inv - inv).abs() / inv).max())
        log("rope: HF inv_freq max relative diff from the spec %.2e, attention_scaling %.7f (spec %.7f)"
            % (rel, hf_m, m))
        if rel > 1e-5 or abs(hf_m - m) > 1e-6:
            log("WARNING: HF's rotary embedding differs from the spec formula")

    t1 = time.time()
    tensors = FileTensors(args.checkpoint)
    n_checked = check_weights(model, tensors, torch)
    seconds["weight_check"] = round(time.time() - t1, 1)

    rng = random.Random(args.seed)
    lens = [args.lens[i % len(args.lens)] for i in range(args.n_prompts)]
    prompts = [[rng.randrange(0, 199998) for _ in range(n)] for n in lens]
    probe_ids = sorted(rng.sample(range(vocab), N_PROBES))
    n_params = sum(tensors.numel(t) for t in tensors.names())
    do_self_check = n_params < 300_000_000 and not args.skip_float64_check
    worst_self = 0.0

    out_prompts = []
    seconds["forward"] = seconds["greedy"] = 0.0
    for ids in prompts:
        t1 = time.time()
        entry, logits = prompt_entry(model, ids, probe_ids, args, torch)
        n = len(ids)
        seconds["forward"] += time.time() - t1
        if args.top_only:
            clear = sum(1 for g in entry["margin"] if g > 0.05)
            log("prompt of %d tokens: %d of %d positions have a top-2 margin above 0.05 "
                "(smallest %.3g)" % (n, clear, n, min(entry["margin"])))
        if do_self_check:
            ref = spec_forward(tensors, cfg, ids, torch)
            err = float((logits.double() - ref).abs().max() / ref.abs().max())
            same_argmax = all(int(ref[p].argmax()) == entry["argmax"][p] for p in range(n))
            worst_self = max(worst_self, err)
            log("prompt of %d tokens: HF vs spec float64 forward max relative error %.2e, "
                "argmax %s" % (n, err, "identical" if same_argmax else "DIFFERS"))
            if (err > 1e-4 or not same_argmax) and not args.allow_mismatch:
                die("HF transformers disagrees with the spec forward pass (error %.2e); "
                    "rerun with --allow-mismatch to write the fixture anyway" % err, code=3)
        del logits
        t1 = time.time()
        entry["greedy"] = greedy(model, ids, args.greedy, args, torch)
        seconds["greedy"] += time.time() - t1
        log("prompt of %d tokens: argmax[-1] %d, lse %.5f, greedy %s (%.1f s)" % (
            n, entry["argmax"][-1], entry["lse_last"], entry["greedy"], time.time() - t1))
        out_prompts.append(entry)
    seconds["forward"] = round(seconds["forward"], 1)
    seconds["greedy"] = round(seconds["greedy"], 1)

    def raw(name, k=4):
        return [float(v) for v in tensors[name].reshape(-1)[:k].to(torch.float64)]

    reference = {
        "library": "transformers %s" % transformers.__version__,
        "torch": torch.__version__,
        "device": args.device,
        "dtype": args.dtype,
        "attn_implementation": "eager",
        "tensors_verified": n_checked,
        "spec_forward_max_rel_err": worst_self if do_self_check else None,
    }
    if args.bf16_experts:
        reference["expert_weights"] = "bfloat16, widened to float32 per layer (exact)"
    if args.changed:
        reference["options"] = dict(args.changed, seed=args.seed)
        reference["experts_implementation"] = getattr(model.config, "_experts_implementation", None)
        if args.device.startswith("cuda"):
            reference["gpu"] = torch.cuda.get_device_name()
            reference["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        reference["seconds"] = seconds
    fixture = {
        "format": 1,
        "config_name": name,
        "synth_seed": args.synth_seed,
        "config": {k: cfg.get(k) for k in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "num_local_experts", "num_experts_per_tok", "intermediate_size",
            "vocab_size", "sliding_window", "rope_theta", "rope_scaling", "layer_types")},
        "weight_probe": {
            "embed_tokens": raw("model.embed_tokens.weight", 8),
            "lm_head": raw("lm_head.weight", 8),
            "layer0_q_bias": raw("model.layers.0.self_attn.q_proj.bias", 8),
            "layer0_gate_up_blocks": [int(v) for v in
                                      tensors["model.layers.0.mlp.experts.gate_up_proj_blocks"].reshape(-1)[:8]],
            "layer0_gate_up_scales": [int(v) for v in
                                      tensors["model.layers.0.mlp.experts.gate_up_proj_scales"].reshape(-1)[:8]],
        },
        "reference": reference,
        "prompts": out_prompts,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out_json)), exist_ok=True)
    with open(args.out_json, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    log("wrote %s (%d prompts, config %s, %s; seconds %s)" % (
        args.out_json, len(out_prompts), name, args.dtype, json.dumps(seconds)))


if __name__ == "__main__":
    main()
