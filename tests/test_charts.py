"""The hand-drawn charts: every point the training loop reported is drawn, including a validation series
that arrives after the chart was first drawn (what gradio's native plots could not show)."""

from __future__ import annotations

import re

from voicetune.ui.charts import bar_chart_html, line_chart_html


def test_a_validation_series_that_arrives_late_is_drawn_beside_the_training_loss() -> None:
    train = [{"step": s, "series": "train", "loss": 4.0 - 0.5 * s} for s in range(1, 5)]
    first = line_chart_html(train[:2])
    assert first.count("<polyline") == 1 and first.count("<circle") == 2
    later = line_chart_html(train + [{"step": 4, "series": "validation", "loss": 2.9}])
    assert later.count("<polyline") == 2 and later.count("<circle") == 5
    assert "validation loss (held-out examples): 2.900 at step 4" in later
    # The training loss falls, so its points go down the chart (SVG y grows downwards).
    ys = [float(y) for y in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', later)[:4]]
    assert ys == sorted(ys)


def test_an_empty_chart_says_what_will_appear() -> None:
    assert "appears here once training starts" in line_chart_html([])
    assert bar_chart_html({}, "nothing") == ""


def test_bars_keep_their_order_start_at_zero_and_escape_labels() -> None:
    html = bar_chart_html({"base": 4.0, "<tuned>": 2.0}, "Loss")
    widths = [float(w) for w in re.findall(r'<rect x="\d+" y="\d+" width="([\d.]+)"', html)]
    assert len(widths) == 2 and abs(widths[0] / widths[1] - 2.0) < 1e-3
    assert "&lt;tuned&gt;" in html and "<tuned>" not in html
    assert html.index("base") < html.index("&lt;tuned&gt;")
