"""The Train tab's loss chart and the Scorecard's bars, drawn as inline SVG.

Written by hand because gradio's native plots (gr.LinePlot/gr.BarPlot, gradio 6.31) fix their colour domain
and axes from the first value they render: a plot that starts empty and is filled later draws no marks at
all, and a "validation" series that appears after the first evaluation is never drawn. Both of ours start
empty, so users saw blank boxes. These are redrawn whole on every update and need no JavaScript.
"""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 12, 34
COLORS = {"train": "#2563eb", "validation": "#ea580c"}
LABELS = {"train": "training loss", "validation": "validation loss (held-out examples)"}


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def line_chart_html(points: list[dict[str, Any]], title: str = "Loss (lower = closer to your examples)") -> str:
    """points: {"step", "series", "loss"} rows, in any order. An empty list draws the frame with a hint."""
    head = f'<div class="vt-loss" style="max-width:100%"><div style="font-weight:600;margin:4px 0">{escape(title)}</div>'
    if not points:
        return head + '<div style="color:#6b7280;padding:24px 0">The loss appears here once training starts.</div></div>'
    steps = [float(p["step"]) for p in points]
    losses = [float(p["loss"]) for p in points]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    pad = (max(losses) - min(losses)) * 0.08 or 0.1
    y0, y1 = min(losses) - pad, max(losses) + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(step: float) -> float:
        return LEFT + (step - x0) / (x1 - x0) * plot_w

    def sy(loss: float) -> float:
        return TOP + (y1 - loss) / (y1 - y0) * plot_h

    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{escape(title)}" '
             f'style="font:11px sans-serif;max-width:760px">',
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#d1d5db"/>']
    for v in _ticks(y0, y1):
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#f3f4f6"/>'
                     f'<text x="{LEFT - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" fill="#6b7280">{v:.2f}</text>')
    for v in sorted({round(t) for t in _ticks(x0, x1)}):
        parts.append(f'<text x="{sx(v):.1f}" y="{TOP + plot_h + 14}" text-anchor="middle" fill="#6b7280">{v}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle" fill="#374151">step</text>')
    legend = []
    for series in sorted({str(p["series"]) for p in points}, key=lambda s: (s != "train", s)):
        rows = sorted((p for p in points if str(p["series"]) == series), key=lambda p: float(p["step"]))
        color = COLORS.get(series, "#059669")
        xy = " ".join(f"{sx(float(p['step'])):.1f},{sy(float(p['loss'])):.1f}" for p in rows)
        parts.append(f'<polyline points="{xy}" fill="none" stroke="{color}" stroke-width="2"/>')
        for p in rows:
            parts.append(f'<circle cx="{sx(float(p["step"])):.1f}" cy="{sy(float(p["loss"])):.1f}" r="2.5" '
                         f'fill="{color}"><title>{escape(series)} · step {p["step"]} · loss {float(p["loss"]):.3f}'
                         f'</title></circle>')
        last = rows[-1]
        legend.append(f'<span style="color:{color};margin-right:14px">● {escape(LABELS.get(series, series))}: '
                      f'{float(last["loss"]):.3f} at step {last["step"]}</span>')
    parts.append("</svg>")
    return head + "".join(parts) + f'<div style="font-size:12px">{"".join(legend)}</div></div>'


BAR_COLORS = {"base": "#9ca3af", "prompt-only": "#a78bfa", "tuned": "#2563eb"}


def bar_chart_html(values: dict[str, float], title: str, fmt: str = "{:.3f}", bar_h: int = 26) -> str:
    """One bar per key, in the given order, from zero, so a small difference is not drawn as a large one."""
    if not values:
        return ""
    top = max([float(v) for v in values.values()] + [1e-9]) * 1.1
    gap, label_w, width = max(4, bar_h // 3), 110, 560
    height = len(values) * (bar_h + gap) + gap
    parts = [f'<div class="vt-bars"><div style="font-weight:600;margin:4px 0">{escape(title)}</div>',
             f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{escape(title)}" '
             f'style="font:12px sans-serif;max-width:560px">']
    for i, (arm, value) in enumerate(values.items()):
        y = gap + i * (bar_h + gap)
        w = float(value) / top * (width - label_w - 70)
        parts.append(f'<text x="{label_w - 8}" y="{y + bar_h / 2 + 4}" text-anchor="end" fill="#374151">'
                     f'{escape(arm)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="3" '
                     f'fill="{BAR_COLORS.get(arm, "#059669")}"><title>{escape(arm)}: {fmt.format(value)}</title></rect>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h / 2 + 4}" fill="#111827">{fmt.format(value)}</text>')
    return "".join(parts) + "</svg></div>"
