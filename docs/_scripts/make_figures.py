"""Draw the theory pages' figures from llmref itself, at docs build time.

``conf.py`` calls :func:`make_all` on every build; the SVGs land in
``docs/_generated/figures/`` (git-ignored) and the MyST pages include them
with ``{figure}``.  Each figure is computed by calling the library, so a change
in behaviour shows up in the picture:

* ``causal_alignment.svg`` -- ``causal_mask(T, S, offset=...)`` with the
  top-left and bottom-right alignments when ``T != S``.
* ``gqa_grouping.svg`` -- which key/value head each query head reads, found by
  running ``naive_attention`` on values that hold their own head index.
* ``softmax_saturation.svg`` -- how peaked attention becomes with and without
  the ``1/sqrt(d)`` scale, measured with ``naive_attention``.

Run it by hand with ``python docs/_scripts/make_figures.py [OUT_DIR]``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from llmref.attention import causal_mask, naive_attention

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "_generated" / "figures"

ALLOWED = "#2b6cb0"  # may attend
BLOCKED = "#edf2f7"  # masked out
KV_COLOURS = [
    "#2b6cb0",
    "#dd6b20",
    "#38a169",
    "#d53f8c",
    "#805ad5",
    "#319795",
    "#b7791f",
    "#e53e3e",
]


def _save(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` as SVG, deterministically, and only if the bytes changed."""
    buf = io.BytesIO()
    with plt.rc_context({"svg.hashsalt": "llmref", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    data = buf.getvalue()
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def _draw_mask(ax: plt.Axes, mask: torch.Tensor, title: str) -> None:
    T, S = mask.shape
    for i in range(T):
        for j in range(S):
            ok = bool(mask[i, j])
            ax.add_patch(plt.Rectangle((j, i), 0.94, 0.94, color=ALLOWED if ok else BLOCKED, lw=0))
    ax.set_xlim(-0.1, S)
    ax.set_ylim(T, -0.1)
    ax.set_aspect("equal")
    ax.set_xticks([j + 0.47 for j in range(S)], [str(j) for j in range(S)])
    ax.set_yticks([i + 0.47 for i in range(T)], [str(i) for i in range(T)])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query i")
    ax.set_title(title, fontsize=10)


def causal_alignment(out: Path, T: int = 3, S: int = 6) -> Path:
    """Top-left vs bottom-right causal masks for T queries over S keys."""
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 2.2))
    _draw_mask(
        axes[0],
        causal_mask(T, S),
        f"top-left: causal_mask({T}, {S})\n(SDPA is_causal=True)",
    )
    _draw_mask(
        axes[1],
        causal_mask(T, S, offset=S - T),
        f"bottom-right: causal_mask({T}, {S}, offset={S - T})\n(FlashAttention, cached decoding)",
    )
    fig.tight_layout()
    path = out / "causal_alignment.svg"
    _save(fig, path)
    return path


def _kv_head_of_each_query_head(H: int, H_kv: int) -> list[int]:
    """Ask naive_attention which K/V head each query head reads.

    Value head ``j`` is filled with the number ``j``; attention output is a
    convex combination of value rows, so query head ``h`` returns exactly the
    index of the K/V head it was grouped with.
    """
    T = S = 2
    q = torch.randn(1, H, T, 4, dtype=torch.float64)
    k = torch.randn(1, H_kv, S, 4, dtype=torch.float64)
    v = torch.arange(H_kv, dtype=torch.float64).view(1, H_kv, 1, 1).expand(1, H_kv, S, 4)
    out = naive_attention(q, k, v.contiguous())
    return [round(float(x)) for x in out[0, :, 0, 0]]


def gqa_grouping(out: Path, H: int = 8) -> Path:
    """Query heads -> shared K/V heads for MHA, GQA and MQA."""
    configs = [(H, f"MHA  (H_kv = {H})"), (2, "GQA  (H_kv = 2)"), (1, "MQA  (H_kv = 1)")]
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 2.6))
    for ax, (H_kv, title) in zip(axes, configs, strict=True):
        groups = _kv_head_of_each_query_head(H, H_kv)
        q_x = [h + 0.5 for h in range(H)]
        kv_w = H / H_kv
        kv_x = [(j + 0.5) * kv_w for j in range(H_kv)]
        for h, g in enumerate(groups):
            c = KV_COLOURS[g % len(KV_COLOURS)]
            ax.plot([q_x[h], kv_x[g]], [1.55, 0.45], color=c, lw=1.2, alpha=0.8)
            ax.add_patch(plt.Rectangle((h + 0.08, 1.55), 0.84, 0.5, color=c, alpha=0.35, lw=0))
            ax.text(q_x[h], 1.8, f"q{h}", ha="center", va="center", fontsize=8)
        for j in range(H_kv):
            c = KV_COLOURS[j % len(KV_COLOURS)]
            x0 = j * kv_w + 0.08
            ax.add_patch(plt.Rectangle((x0, -0.05), kv_w - 0.16, 0.5, color=c, lw=0))
            label = f"k{j}, v{j}" if kv_w >= 2 else f"k{j}\nv{j}"
            ax.text(kv_x[j], 0.2, label, ha="center", va="center", fontsize=8, color="white")
        ax.set_xlim(0, H)
        ax.set_ylim(-0.15, 2.15)
        ax.axis("off")
        ax.set_title(title, fontsize=10)
    fig.text(
        0.5,
        -0.02,
        "top: query heads   bottom: key/value heads (what the KV cache stores)",
        ha="center",
        fontsize=8,
        color="#4a5568",
    )
    fig.tight_layout()
    path = out / "gqa_grouping.svg"
    _save(fig, path)
    return path


def softmax_saturation(out: Path, S: int = 64, trials: int = 256) -> Path:
    """Largest attention weight per row, with and without the 1/sqrt(d) scale."""
    gen = torch.Generator().manual_seed(0)
    dims = [4, 16, 64, 256, 1024]
    scaled, unscaled = [], []
    for d in dims:
        q = torch.randn(1, 1, trials, d, generator=gen, dtype=torch.float64)
        k = torch.randn(1, 1, S, d, generator=gen, dtype=torch.float64)
        v = torch.zeros(1, 1, S, 1, dtype=torch.float64)
        _, w_scaled = naive_attention(q, k, v, return_weights=True)
        _, w_plain = naive_attention(q, k, v, scale=1.0, return_weights=True)
        scaled.append(float(w_scaled.amax(-1).mean()))
        unscaled.append(float(w_plain.amax(-1).mean()))
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    ax.plot(dims, unscaled, "o-", color="#dd6b20", label=r"scale $=1$ (logit std $\sqrt{d}$)")
    ax.plot(dims, scaled, "o-", color="#2b6cb0", label=r"scale $=1/\sqrt{d}$ (logit std 1)")
    ax.axhline(1.0 / S, color="#a0aec0", lw=1, ls="--", label=f"uniform (1/{S})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("head dimension d")
    ax.set_ylabel("mean largest weight in a row")
    ax.set_title(f"Random unit-variance q, k; {S} keys", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "softmax_saturation.svg"
    _save(fig, path)
    return path


def make_all(out: Path = DEFAULT_OUT) -> list[Path]:
    """Draw every figure into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    return [causal_alignment(out), gqa_grouping(out), softmax_saturation(out)]


if __name__ == "__main__":
    for p in make_all(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT):
        print(p)
