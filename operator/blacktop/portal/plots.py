"""Plots as inline SVG, drawn on the server: no script, no library, nothing to download. Pure.

Two shapes cover the scorecard: horizontal bars (adoption per golden path, cost per team with its
budget as a marker) and a histogram (lead time). Every text is escaped; every bar carries a
``<title>`` with its exact figure, so hovering (or a screen reader) gives the number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

ROW_HEIGHT = 26
LABEL_WIDTH = 170
VALUE_WIDTH = 150


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str  # the figure printed after the bar
    marker: float | None = None  # e.g. the budget, drawn as a line across the bar
    alert: bool = False  # drawn in the warning colour (over budget)


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def bar_chart(title: str, bars: Sequence[Bar], width: int = 640) -> Markup:
    """Horizontal bars, one per row, scaled to the largest value or marker."""
    if not bars:
        return Markup('<p class="empty">{}</p>').format(f"{title}: nothing to show yet.")
    top = max([b.value for b in bars] + [b.marker or 0 for b in bars]) or 1.0
    plot = width - LABEL_WIDTH - VALUE_WIDTH
    height = ROW_HEIGHT * len(bars) + 10
    parts = [
        Markup('<svg class="plot" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}">').format(
            w=width, h=height, t=title
        ),
        Markup("<title>{}</title>").format(title),
    ]
    for i, bar in enumerate(bars):
        y = 5 + i * ROW_HEIGHT
        length = max(1.0, plot * bar.value / top) if bar.value > 0 else 0.0
        css = "bar alert" if bar.alert else "bar"
        parts.append(
            Markup('<text class="label" x="{x}" y="{y}" text-anchor="end">{label}</text>').format(
                x=LABEL_WIDTH - 8, y=y + 16, label=bar.label
            )
        )
        parts.append(
            Markup(
                '<rect class="{css}" x="{x}" y="{y}" width="{w}" height="18"><title>{label}: {text}</title></rect>'
            ).format(css=css, x=LABEL_WIDTH, y=y + 2, w=_number(length), label=bar.label, text=bar.text)
        )
        if bar.marker is not None:
            mx = LABEL_WIDTH + plot * bar.marker / top
            parts.append(
                Markup(
                    '<line class="marker" x1="{x}" x2="{x}" y1="{y1}" y2="{y2}"><title>{label}: {text}</title></line>'
                ).format(x=_number(mx), y1=y, y2=y + 22, label=bar.label, text=bar.text)
            )
        parts.append(
            Markup('<text class="value" x="{x}" y="{y}">{text}</text>').format(
                x=LABEL_WIDTH + plot + 6, y=y + 16, text=bar.text
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def histogram(
    title: str, buckets: Sequence[tuple[str, float]], unit: str, width: int = 640, height: int = 220
) -> Markup:
    """Vertical bars of counts per bucket (label, count), labels under the bars."""
    if not buckets or not any(count for _, count in buckets):
        return Markup('<p class="empty">{}</p>').format(f"{title}: nothing to show yet.")
    top = max(count for _, count in buckets) or 1.0
    left, bottom, plot_h = 40, 40, height - 60
    slot = (width - left - 10) / len(buckets)
    parts = [
        Markup('<svg class="plot" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}">').format(
            w=width, h=height, t=title
        ),
        Markup("<title>{}</title>").format(title),
        Markup('<line class="axis" x1="{l}" x2="{r}" y1="{y}" y2="{y}"></line>').format(
            l=left, r=width - 10, y=height - bottom
        ),
        Markup('<text class="value" x="4" y="{y}">{top}</text>').format(
            y=height - bottom - plot_h + 4, top=_number(top)
        ),
    ]
    for i, (label, count) in enumerate(buckets):
        x = left + i * slot
        h = plot_h * count / top
        parts.append(
            Markup(
                '<rect class="bar" x="{x}" y="{y}" width="{w}" height="{h}"><title>{label}: {count} {unit}</title></rect>'
            ).format(
                x=_number(x + 2),
                y=_number(height - bottom - h),
                w=_number(max(1.0, slot - 4)),
                h=_number(h),
                label=label,
                count=_number(count),
                unit=unit,
            )
        )
        parts.append(
            Markup('<text class="tick" x="{x}" y="{y}" text-anchor="middle">{label}</text>').format(
                x=_number(x + slot / 2), y=height - bottom + 16, label=label
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)
