"""The landing page's headline results, computed at build time from a committed file.

``llmref-headlines`` directive::

    ```{llmref-headlines} _data/headlines.json
    ```

reads the JSON written by ``docs/_data/measure_headlines.py`` (raw timings --
median CPU seconds per call -- and perplexities, with the machine line, load
average and date they were measured on) and renders a row of headline boxes --
each a number, a sentence and a link to the theory page that explains it --
followed by where the numbers come from.  The ratios are computed here, from the
raw numbers, on every build; re-measure with that script, not by editing the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes
from llmref_docs import RegistryTable
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _fmt_load(load: Any) -> str:
    if not load:
        return "unknown"
    return ", ".join(f"{v:.1f}" for v in load)


def headlines(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(value, reST sentence)`` for each headline, computed from the raw numbers."""
    out = []
    att = data["attention"]
    s = att["cpu_seconds"]
    B, H, T, D = att["shape"]
    out.append(
        (
            f"{s['chunked'] / s['sdpa']:.1f}\u00d7",
            "the time of :func:`~llmref.attention.chunked_attention` -- FlashAttention's "
            "tiling and online softmax in plain PyTorch: exact, with memory linear in the "
            "sequence -- relative to PyTorch's fused SDPA kernel "
            f"(causal, float32, B·H = {B * H}, T = {T}, D = {D}). "
            "Why it is not faster: :doc:`/theory/attention/flash-attention`.",
        )
    )
    lin = data["int4_linear"]
    s = lin["cpu_seconds"]
    n_out, n_in = lin["layer"]
    out.append(
        (
            f"{s['float32'] / s['int4_w4a8']:.1f}\u00d7",
            f"faster than float32 for a {n_out} \u00d7 {n_in} layer at one token, with int4 "
            f"weights (groups of {lin['group_size']}) and int8 activations "
            f"(``int4_w4a8``); {s['float32'] / s['int4_auto']:.1f}\u00d7 with the exact "
            f"int4 kernel (``{lin['kernels']['int4_auto']}``). Where the speed comes "
            "from: :doc:`/theory/quant/weight-only`.",
        )
    )
    ptq = data["ptq"]
    ppl = ptq["smollm2_perplexity"]
    out.append(
        (
            f"{ppl['float32']:.1f} → {ppl['gptq int4 g64']:.1f}",
            "SmolLM2-135M's perplexity, float32 to GPTQ int4 (groups of 64); plain "
            f"round-to-nearest gives {ppl['rtn int4 g64']:.1f}, AWQ "
            f"{ppl['awq int4 g64']:.1f}, SmoothQuant W8A8 "
            f"{ppl['smoothquant W8A8']:.2f}. Every method side by side: "
            ":doc:`/theory/quant/ptq`.",
        )
    )
    return out


class Headlines(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        rel, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(rel)
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        boxes = nodes.container(classes=["llmref-headlines"])
        for value, sentence in headlines(data):
            box = nodes.container(classes=["llmref-headline"])
            box += nodes.paragraph(value, value, classes=["llmref-headline-value"])
            box += self._parse(sentence)
            boxes += box
        ptq = data["ptq"]
        load = data.get("load_average", {})
        source = (
            f"Timings: {data['timer']}, interleaved repeats, on {data['machine']}; "
            f"measured {data['date']} by ``{data['command']}``, load average "
            f"{_fmt_load(load.get('start'))} at the start and {_fmt_load(load.get('end'))} "
            "at the end. "
            f"Perplexities: ``{ptq['file']}``, written by ``{ptq['command']}`` "
            f"({ptq['machine']}, {ptq['date']})."
        )
        note = nodes.container(classes=["llmref-headlines-source"])
        note += self._parse(source)
        return [boxes, note]

    def _parse(self, text: str) -> list[nodes.Node]:
        # reST inside a MyST page, as the registry tables do it
        return RegistryTable._parse_rst(self, text)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("llmref-headlines", Headlines)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
