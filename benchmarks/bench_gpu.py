"""What one command of a profile costs: wall time per stage and per chapter, tokens per second, peak memory, and the
achieved fraction of the device's dense peak FLOP/s in the forward passes.

It runs a profile as ``python -m cgar_src.book.run`` does (the same functions: ``cgar_src.book.run.extract_stage`` and
``run_chapter``), with a cold state cache in a work folder, and instruments it from outside:

- load: ``load_model`` of the profile's model (the chapters pay it again, each in its own kernel);
- per stage (dataset x shots): extraction (tokenising, forward passes, cache writes) and within it the forward passes
  alone (``cgar_src.lm.hidden_states``), the real and padded tokens forwarded, tokens per second, the model FLOPs
  of those tokens (2 x the body's matmul weights per token plus causal attention, ``bench_prefix.attention_flops``)
  and their fraction of ``--peak-tflops``; then the logit-lens decode over the whole vocabulary;
- per chapter: papermill wall time; peak memory.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` of this process (extraction) and the device-wide memory in
use sampled every 0.2 s with ``torch.cuda.mem_get_info`` (chapters run in their own kernels); on a CPU the peak
resident set of this process and of the chapter kernels (``getrusage``).

Models: ``--model llama3-8b-random`` builds a random ``LlamaConfig`` with Meta-Llama-3-8B's dimensions (32 layers,
hidden 4096, intermediate 14336, 32 heads, 8 key-value heads, vocabulary 128256: exactly the real model's cost)
and saves it in the profile's dtype to the work folder (16 GB in bf16) so that the chapters can load it by path;
``--model tiny-random`` does the same at hidden 64 with 2 blocks (the CPU smoke test); any other value is a hub id,
a local path or the default model. Random models use the SmolLM2 tokenizer (``--tokenizer``: a folder with
``tokenizer.json``; default the converted default model's), whose ids all lie inside both vocabularies, so label
words and prompts tokenise as for SmolLM2 (Llama-3's own tokenizer gives prompts of similar length).

    python benchmarks/bench_gpu.py --profile paper --model llama3-8b-random --peak-tflops 989 --workdir /scratch/b
    python benchmarks/bench_gpu.py --profile paper --model tiny-random --device cpu \\
        --set n_queries=4 --set "shots=[0, 1]" --set "datasets=[sst2]" --chapters 06_attention_first_order

Dense bf16 peaks (NVIDIA data sheets, without sparsity): H100 SXM 989 TFLOP/s, H100 PCIe 756, H200 989, A100 312.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_prefix import attention_flops, body_matmul_weights  # noqa: E402  (one FLOP count for both scripts)

from cgar_src.analysis import lens as lens_mod  # noqa: E402
from cgar_src.book.run import extract_stage, load_profile, profile_model, run_chapter  # noqa: E402
from cgar_src.lm import cache as cache_mod  # noqa: E402
from cgar_src.lm import prefix as prefix_mod  # noqa: E402
from cgar_src.lm import token_batches  # noqa: E402

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True)
RANDOM_MODELS = {"llama3-8b-random": LLAMA3_8B, "tiny-random": TINY}
GIB = 2 ** 30


def build_random_model(name: str, folder: Path, dtype: str, device: str, tokenizer_dir: Path | None) -> Path:
    """A random Llama of the named shape saved (with the tokenizer) to ``folder``; reused when already there."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "complete.json").exists():
        return folder
    if tokenizer_dir is None:
        from cgar_src.lm import default_model_dir

        tokenizer_dir = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = RANDOM_MODELS[name]
    if len(tokenizer) > shape["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than {name}'s vocabulary {shape['vocab_size']}")
    cfg = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=getattr(torch, dtype))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "complete.json").write_text(json.dumps({"shape": name, "dtype": dtype, "seed": 0}))
    del model
    gc.collect()
    return folder


class Meter:
    """Wraps ``cgar_src.lm.cache.hidden_states`` and ``cgar_src.lm.prefix.prefix_states`` (what the state cache calls
    for every missing chunk: whole prompts, or one demonstration prefix and its queries) and
    ``cgar_src.analysis.lens.decode_stats``: accumulated time, prompts, real and padded tokens and model FLOPs (a
    prefix counts once; a query's attention runs over the prefix and its own earlier tokens)."""

    def __init__(self, lm):
        self.lm, self.cuda = lm, lm.device.type == "cuda"
        cfg = lm.model.config
        self.w = body_matmul_weights(lm.model)
        self.cfg = cfg
        self.reset()
        self._forward, self._decode = cache_mod.hidden_states, lens_mod.decode_stats
        self._prefix = prefix_mod.prefix_states
        cache_mod.hidden_states, lens_mod.decode_stats = self.forward, self.decode
        prefix_mod.prefix_states = self.prefix

    def reset(self) -> None:
        self.t_forward = self.t_decode = 0.0
        self.prompts = self.tokens = self.padded = 0
        self.flops = 0.0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def forward(self, lm, prompts, **kw):
        lengths: list[int] = []
        batches = token_batches(lm.tokenizer, prompts, kw.get("batch_size", 8),
                                kw.get("max_batch_tokens") or lm.max_batch_tokens, lengths_out=lengths)
        self._sync()
        t0 = time.perf_counter()
        out = self._forward(lm, prompts, **kw)
        self._sync()
        self.t_forward += time.perf_counter() - t0
        self.prompts += len(prompts)
        self.tokens += sum(lengths)
        self.padded += sum(ids.numel() for _, ids, _ in batches)
        self.flops += 2.0 * self.w * sum(lengths) + attention_flops(self.cfg, 0, lengths)
        return out

    def prefix(self, lm, prefix, queries, **kw):
        self._sync()
        t0 = time.perf_counter()
        out = self._prefix(lm, prefix, queries, **kw)
        self._sync()
        self.t_forward += time.perf_counter() - t0
        p = out.n_prefix
        self.prompts += len(queries)
        self.tokens += out.tokens_forwarded
        self.padded += out.padded_tokens + p
        self.flops += 2.0 * self.w * out.tokens_forwarded + attention_flops(self.cfg, p, [len(q) for q in out.query_ids])
        return out

    def decode(self, *args, **kw):
        self._sync()
        t0 = time.perf_counter()
        out = self._decode(*args, **kw)
        self._sync()
        self.t_decode += time.perf_counter() - t0
        return out

    def close(self) -> None:
        cache_mod.hidden_states, lens_mod.decode_stats = self._forward, self._decode
        prefix_mod.prefix_states = self._prefix


class DeviceMemory:
    """Peak device-wide memory in use (all processes), sampled every 0.2 s while running (CUDA only)."""

    def __init__(self, enabled: bool):
        self.enabled, self.peak, self._stop = enabled, 0, threading.Event()

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            self._stop.wait(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        if self.enabled:
            self._thread.join()


def rss_gib(who: int) -> float:
    """Peak resident set in GiB of this process (RUSAGE_SELF) or of its finished children (RUSAGE_CHILDREN)."""
    return resource.getrusage(who).ru_maxrss * 1024 / GIB  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper", help="name in params/ or a YAML path (default: paper)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile entry")
    ap.add_argument("--model", default=None,
                    help=f"{' or '.join(RANDOM_MODELS)} (random weights, saved to the work folder), or a hub id / "
                         "local path (default: the profile's model_id)")
    ap.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder for a random model")
    ap.add_argument("--device", default=None, help="override the profile's device (e.g. cpu for a smoke test)")
    ap.add_argument("--chapters", nargs="*", default=None,
                    help="chapters to run (default: the profile's; give none to skip the chapters)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense peak TFLOP/s in the profile's dtype, for the achieved fraction")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="work folder: random model, cold state cache, results (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        ap.error("--peak-tflops must be > 0")
    overrides = list(args.set)
    if args.device:
        overrides.append(f"device={args.device}")
    try:
        prof = load_profile(args.profile, overrides)
    except ValueError as err:
        ap.error(str(err))
    if args.chapters is not None:
        prof["chapters"] = list(args.chapters)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_gpu-")
        args.workdir = Path(tmp.name)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # a cold state cache; converted models (the default model's float32 copy) are shared with the user cache
    from cgar_src.lm import user_cache_dir

    models = user_cache_dir() / "models"
    (work / "cache").mkdir(exist_ok=True)
    if models.exists() and not (work / "cache" / "models").exists():
        (work / "cache" / "models").symlink_to(models, target_is_directory=True)
    os.environ["CGAR_CACHE"] = str(work / "cache")
    if args.model in RANDOM_MODELS:
        t0 = time.perf_counter()
        folder = build_random_model(args.model, work / args.model, prof["dtype"], prof["device"], args.tokenizer)
        print(f"random model {args.model} ({prof['dtype']}) in {folder}: built and saved in "
              f"{time.perf_counter() - t0:.1f} s")
        prof["model_id"] = str(folder)
    elif args.model:
        prof["model_id"] = args.model
    cuda = torch.device(prof["device"]).type == "cuda"
    report: dict = {"profile": prof.get("profile", args.profile), "model": args.model or prof["model_id"],
                    "dtype": prof["dtype"], "device": prof["device"], "n_queries": prof["n_queries"],
                    "shots": prof["shots"], "datasets": prof["datasets"], "batch_size": prof["batch_size"],
                    "max_batch_tokens": prof.get("max_batch_tokens"), "stages": [], "chapters": []}
    if cuda:
        report["gpu"] = torch.cuda.get_device_name()
        torch.cuda.reset_peak_memory_stats()
    t_all = time.perf_counter()

    from cgar_src.lm import Unembed

    t0 = time.perf_counter()
    lm = profile_model(prof)
    unembed = Unembed(lm.model)
    report["load_s"] = time.perf_counter() - t0
    print(f"load {prof['model_id']} ({lm.dtype}, {lm.device}): {report['load_s']:.1f} s; "
          f"{body_matmul_weights(lm.model) / 1e9:.3f} G body matmul weights")
    meter = Meter(lm)
    header = f"{'stage':<14}{'wall s':>8}{'fwd s':>8}{'decode s':>9}{'prompts':>8}{'tokens':>9}{'pad %':>7}{'tok/s':>9}"
    header += f"{'TFLOP/s':>9}" + (f"{'of peak':>8}" if args.peak_tflops else "")
    print(header)
    try:
        for dataset in prof["datasets"]:
            for shots in prof["shots"]:
                meter.reset()
                t0 = time.perf_counter()
                extract_stage(lm, unembed, prof, dataset, shots, work / "results", progress=False)
                if cuda:
                    torch.cuda.synchronize()
                wall = time.perf_counter() - t0
                tflops = meter.flops / meter.t_forward / 1e12 if meter.t_forward else 0.0
                stage = {"dataset": dataset, "shots": shots, "wall_s": wall, "forward_s": meter.t_forward,
                         "decode_s": meter.t_decode, "prompts": meter.prompts, "tokens": meter.tokens,
                         "padded_tokens": meter.padded, "flops": meter.flops,
                         "tokens_per_s": meter.tokens / meter.t_forward if meter.t_forward else None,
                         "tflops": tflops}
                if args.peak_tflops:
                    stage["fraction_of_peak"] = tflops / args.peak_tflops
                report["stages"].append(stage)
                pad = 100 * (meter.padded / meter.tokens - 1) if meter.tokens else 0.0
                line = (f"{dataset + ' k=' + str(shots):<14}{wall:8.1f}{meter.t_forward:8.1f}{meter.t_decode:9.1f}"
                        f"{meter.prompts:8d}{meter.tokens:9d}{pad:7.1f}"
                        f"{(stage['tokens_per_s'] or 0):9.0f}{tflops:9.2f}")
                if args.peak_tflops:
                    line += f"{stage['fraction_of_peak']:8.1%}"
                print(line)
    finally:
        meter.close()
    report["extraction_peak_gib"] = (torch.cuda.max_memory_allocated() / GIB if cuda
                                     else rss_gib(resource.RUSAGE_SELF))
    del lm, unembed, meter
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    for ch in prof["chapters"]:
        with DeviceMemory(cuda) as mem:
            t0 = time.perf_counter()
            run_chapter(prof, ch, work / "results", progress_bar=False)
            wall = time.perf_counter() - t0
        peak = mem.peak / GIB if cuda else rss_gib(resource.RUSAGE_CHILDREN)
        report["chapters"].append({"chapter": ch, "wall_s": wall, "peak_gib": peak})
        print(f"chapter {ch:<28} {wall:8.1f} s   peak memory {peak:6.2f} GiB"
              + (" (device, all processes)" if cuda else " (largest kernel so far, resident)"))
    report["total_s"] = time.perf_counter() - t_all
    st = report["stages"]
    fwd = sum(s["forward_s"] for s in st)
    tot = {"extraction_s": sum(s["wall_s"] - s["decode_s"] for s in st), "forward_s": fwd,
           "decode_s": sum(s["decode_s"] for s in st), "chapters_s": sum(c["wall_s"] for c in report["chapters"]),
           "tokens": sum(s["tokens"] for s in st),
           "tflops": sum(s["flops"] for s in st) / fwd / 1e12 if fwd else 0.0}
    report["totals"] = tot
    peaks = [report["extraction_peak_gib"]] + [c["peak_gib"] for c in report["chapters"]]
    report["peak_gib"] = max(peaks)
    print(f"total {report['total_s']:.1f} s: load {report['load_s']:.1f}, extraction {tot['extraction_s']:.1f} "
          f"(forward {fwd:.1f}, {tot['tokens'] / fwd if fwd else 0:.0f} tokens/s, {tot['tflops']:.2f} TFLOP/s"
          + (f" = {tot['tflops'] / args.peak_tflops:.1%} of {args.peak_tflops:g}" if args.peak_tflops else "")
          + f"), decode {tot['decode_s']:.1f}, chapters {tot['chapters_s']:.1f}; "
          f"peak memory {report['peak_gib']:.2f} GiB" + (f" on {report['gpu']}" if cuda else " resident (CPU)"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
