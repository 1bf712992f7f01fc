"""One self-contained HTML report of a run: summary, pictures, loss curves, the AP table, notes.

``write_report(out_dir, data)`` writes ``out_dir/report.html``. Every picture is embedded as a
base64 data URI (downscaled to at most ``MAX_WIDTH`` px wide; photos as JPEG, plots as PNG),
so the single file opens anywhere; no scripts, no external resources. Sections whose data is
missing are left out. AP values are fractions in [0, 1] (as COCOeval gives them) and are shown
as percentages; in every row the best value is bold, whichever method it belongs to.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sniper.io import atomic_write_text

__all__ = ["AP_METRICS", "MAX_WIDTH", "ReportData", "embed_image", "render_html", "write_report"]

MAX_WIDTH = 1000
AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

Picture = tuple[str | os.PathLike[str], str]  # (path, caption)


@dataclass
class ReportData:
    """What a report shows. Every field is optional; empty ones are omitted.

    ``stage_times``: step name -> wall seconds, the steps of the run one after the other (the
    total is their sum); ``stage_parts``: step name -> {part: seconds}, parts of a step shown
    indented below it and not added to the total again. ``ap``: method -> {metric: AP in [0, 1]} with
    metrics from :data:`AP_METRICS`; ``per_class_ap``: method -> {class name: AP}. Methods appear
    as columns in the order of ``ap`` (e.g. ``{"SNIPER": ..., "baseline": ...}``). ``mask_ap`` and
    ``mask_per_class_ap``: the same for mask AP (COCO ``segm``), a second table after the box one.
    """

    title: str = "SNIPER run report"
    summary: str = ""
    dataset: str = ""
    weights: str = ""  # e.g. "ImageNet (torchvision mobilenet_v2)" or "random init"
    facts: dict[str, str] = field(default_factory=dict)  # more key -> value rows of the summary
    stage_times: dict[str, float] = field(default_factory=dict)
    stage_parts: dict[str, dict[str, float]] = field(default_factory=dict)
    chip_images: list[Picture] = field(default_factory=list)
    plots: list[tuple[str, list[Picture]]] = field(default_factory=list)  # (section title, plots)
    loss_curves: list[Picture] = field(default_factory=list)
    detections: list[Picture] = field(default_factory=list)
    ap: dict[str, dict[str, float]] = field(default_factory=dict)
    per_class_ap: dict[str, dict[str, float]] = field(default_factory=dict)
    mask_ap: dict[str, dict[str, float]] = field(default_factory=dict)
    mask_per_class_ap: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: str = ""


_CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1040px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.7em; margin-bottom: .2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .25em .7em; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.group td { background: #fafafa; font-style: italic; }
tr.part td { color: #666; font-size: .92em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: .92em; }
.missing { color: #a33; }
.small { color: #666; font-size: .9em; }
"""


def embed_image(path: str | os.PathLike[str], *, max_width: int = MAX_WIDTH, photo: bool = True) -> str:
    """A ``data:`` URI of the picture at ``path``, at most ``max_width`` px wide.

    ``photo``: JPEG (quality 85); otherwise PNG (sharp lines and text of plots), unless the JPEG
    is much smaller.
    """
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        elif im.mode != "RGB":
            im = im.convert("RGB")
        if im.width > max_width:
            im = im.resize(
                (max_width, max(1, round(im.height * max_width / im.width))), Image.Resampling.LANCZOS
            )
    jpeg = io.BytesIO()
    im.save(jpeg, format="JPEG", quality=85, optimize=True)
    data, mime = jpeg.getvalue(), "image/jpeg"
    if not photo:
        png = io.BytesIO()
        im.save(png, format="PNG", optimize=True)
        if png.tell() <= 2 * len(data):
            data, mime = png.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _paragraphs(text: str) -> str:
    parts = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
    return "\n".join(f"<p>{_e(p).replace(chr(10), '<br>')}</p>" for p in parts)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _figures(items: Sequence[Picture], photo: bool) -> str:
    out = []
    for path, caption in items:
        try:
            uri = embed_image(path, photo=photo)
        except (OSError, ValueError) as e:  # a missing or broken picture must not lose the report
            out.append(f'<p class="missing">picture not available: {_e(path)} ({_e(type(e).__name__)})</p>')
            continue
        alt = caption or Path(path).name
        out.append(
            f'<figure><img src="{uri}" alt="{_e(alt)}"><figcaption>{_e(caption)}</figcaption></figure>'
        )
    return "\n".join(out)


def _num(v: float | None) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _ap_rows(rows: Sequence[tuple[str, list[float | None]]], diff: bool) -> list[str]:
    out = []
    for name, values in rows:
        # Compare what is shown: values that print the same are equally good.
        present = [round(100 * v, 1) for v in values if v is not None]
        best = max(present) if present else None
        cells = []
        for v in values:
            if v is None:
                cells.append('<td class="num">–</td>')
            else:
                text = f"{100 * v:.1f}"
                bold = len(present) > 1 and round(100 * v, 1) == best
                cells.append(f'<td class="num">{"<b>" + text + "</b>" if bold else text}</td>')
        if diff:
            a, b = values[0], values[1]
            cells.append(f'<td class="num">{"–" if a is None or b is None else f"{100 * (a - b):+.1f}"}</td>')
        out.append(f"<tr><th>{_e(name)}</th>{''.join(cells)}</tr>")
    return out


def _ap_table(ap: Mapping[str, Mapping[str, float]], per_class: Mapping[str, Mapping[str, float]]) -> str:
    methods = list(ap) + [m for m in per_class if m not in ap]
    diff = len(methods) == 2
    head = "".join(f"<th>{_e(m)}</th>" for m in methods)
    if diff:
        head += f"<th>{_e(methods[0])} − {_e(methods[1])}</th>"
    metrics = [k for k in AP_METRICS if any(k in ap.get(m, {}) for m in methods)]
    metrics += sorted({k for m in methods for k in ap.get(m, {})} - set(AP_METRICS))
    rows = [f"<tr><th>metric</th>{head}</tr>"]
    rows += _ap_rows([(k, [_num(ap.get(m, {}).get(k)) for m in methods]) for k in metrics], diff)
    classes: list[str] = []
    for m in methods:
        classes += [c for c in per_class.get(m, {}) if c not in classes]
    if classes:
        span = len(methods) + 1 + int(diff)
        rows.append(f'<tr class="group"><td colspan="{span}">AP per class</td></tr>')
        rows += _ap_rows([(c, [_num(per_class.get(m, {}).get(c)) for m in methods]) for c in classes], diff)
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _stage_table(steps: Mapping[str, float], parts: Mapping[str, Mapping[str, float]]) -> str:
    def row(name: str, v: float, cls: str = "") -> str:
        return f'<tr{cls}><td>{_e(name)}</td><td class="num">{_duration(v)}</td><td class="num">{v:.1f}</td></tr>'

    rows = []
    for k, v in steps.items():
        rows.append(row(k, v))
        rows += [row(f"\u2003{p}", pv, ' class="part"') for p, pv in parts.get(k, {}).items()]
    total = sum(steps.values())
    rows.append(f'<tr><th>total</th><th class="num">{_duration(total)}</th><th class="num">{total:.1f}</th></tr>')
    return (
        "<h3>Wall time per stage</h3><table><tr><th>stage</th><th>h:m:s</th><th>seconds</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def render_html(data: ReportData) -> str:
    """The report as one HTML string (pictures read from disk and embedded)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(data.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(data.title)}</h1>",
    ]
    summary = []
    if data.summary:
        summary.append(_paragraphs(data.summary))
    facts = {}
    if data.dataset:
        facts["dataset"] = data.dataset
    if data.weights:
        facts["weights"] = data.weights
    facts.update(data.facts)
    if facts:
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.items())
        summary.append(f"<table>{rows}</table>")
    if data.stage_times:
        summary.append(_stage_table(data.stage_times, data.stage_parts))
    if summary:
        parts += ["<h2>Summary</h2>", *summary]
    if data.chip_images:
        parts += ["<h2>Chips</h2>", _figures(data.chip_images, photo=True)]
    for title, pictures in data.plots:
        parts += [f"<h2>{_e(title)}</h2>", _figures(pictures, photo=False)]
    if data.loss_curves:
        parts += ["<h2>Loss curves</h2>", _figures(data.loss_curves, photo=False)]
    if data.detections:
        parts += ["<h2>Detections on validation images</h2>", _figures(data.detections, photo=True)]
    if data.ap or data.per_class_ap:
        parts += [
            "<h2>Average precision</h2>",
            '<p class="small">COCO AP in %, the best value of each row in bold.</p>',
            _ap_table(data.ap, data.per_class_ap),
        ]
    if data.mask_ap or data.mask_per_class_ap:
        parts += [
            "<h2>Mask average precision</h2>",
            '<p class="small">COCO mask AP (IoU of the predicted instance masks with the ground-truth '
            "segmentations) in %, the best value of each row in bold.</p>",
            _ap_table(data.mask_ap, data.mask_per_class_ap),
        ]
    if data.notes:
        parts += ["<h2>Notes</h2>", _paragraphs(data.notes)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(out_dir: str | os.PathLike[str], data: ReportData, *, name: str = "report.html") -> Path:
    """Write ``out_dir/name`` (atomically) and return its path."""
    path = Path(out_dir) / name
    atomic_write_text(path, render_html(data))
    return path
