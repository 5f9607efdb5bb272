"""The self-contained ``viz/report.html`` of a full-mode run.

One HTML file: inline CSS, the plots embedded as base64 ``data:`` URIs, no JavaScript, no external
fetches. Every string taken from the data (column names are user input) is HTML-escaped. The bytes
depend only on the inputs (no timestamps), so the report is as deterministic as the other artifacts.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from q4 import __version__

__all__ = ["CAPTIONS", "TOP_FEATURES", "render_report"]

#: Rows in the "top features" tables.
TOP_FEATURES = 20

#: One line per plot (by file name): what it shows and how to read it.
CAPTIONS: dict[str, tuple[str, str]] = {
    "quadrant_scatter.png": (
        "Quadrants of the scores",
        "Each row at its two leading PCA scores (s1, s2); the axes through 0 cut the plane into Q1..Q4. "
        "Blue Q1 and green Q4 (s1 ≥ 0) are kept as signal, orange Q2 and red Q3 are discarded as noise; "
        "for many rows the colour intensity shows how many rows fall in each cell (log scale).",
    ),
    "energy.png": (
        "Energy per quadrant",
        "For each quadrant, its share of the valid rows (hatched) next to its share of the total energy "
        "‖z‖² (solid) and of the energy captured by p1, p2 (dotted). A quadrant with more energy than rows "
        "holds rows far from the mean. Right: the same for keep vs discard, with the SNR.",
    ),
    "scree.png": (
        "Scree plot",
        "Share of the total variance explained by each principal component (bars; p1 and p2 dark) and the "
        "running total (line). The Q4 split uses only p1 and p2: the higher their cumulative share, the "
        "more of the data the split describes.",
    ),
    "loadings.png": (
        "Loadings",
        "How strongly each feature drives p1 and p2 (red positive, blue negative). Rows with a large "
        "p1 loading decide keep vs discard; for wide tables only the strongest features are shown.",
    ),
    "correlation.png": (
        "Feature correlations",
        "Pearson correlation between every pair of features (red +1, blue −1, grey undefined). Blocks of "
        "strongly correlated features are what the leading components pick up.",
    ),
    "svd_embedding.png": (
        "SVD embedding",
        "The rows in the first two components of the truncated SVD of the standardized data, coloured by "
        "their Q4 quadrant. It should mirror the quadrant plot up to the signs of the axes.",
    ),
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2430;
       max-width: 1040px; margin: 0 auto; padding: 24px 32px 48px; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; }
h2 { font-size: 1.25em; border-bottom: 2px solid #dde3ea; padding-bottom: 4px; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
.subtitle { color: #5a6472; margin-top: 0; }
.lead { background: #f3f6fa; border-left: 4px solid #1f77b4; padding: 10px 16px; }
.warnings { border: 2px solid #d68a00; background: #fff7e6; padding: 10px 16px; border-radius: 4px; }
.warnings.none { border-color: #2ca02c; background: #eef8ee; }
.warnings h2 { border: none; margin-top: 0.2em; }
.warnings li { margin: 4px 0; }
.critical { color: #b00020; font-weight: 600; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.92em; }
th, td { border: 1px solid #dde3ea; padding: 4px 10px; text-align: right; vertical-align: top; }
th { background: #f3f6fa; }
td.text, th.text { text-align: left; }
tr.keep td:first-child { border-left: 4px solid #1f77b4; }
tr.discard td:first-child { border-left: 4px solid #d62728; }
tr.total td { font-weight: 600; }
.null { color: #8a94a3; font-style: italic; }
.headline { font-size: 1.15em; }
.headline b { font-size: 1.2em; }
code { font-size: 0.9em; background: #f3f6fa; padding: 0 3px; word-break: break-all; }
figure { margin: 18px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid #dde3ea; }
figcaption { color: #3a4452; font-size: 0.95em; margin-top: 4px; }
.note { color: #5a6472; font-size: 0.9em; }
footer { margin-top: 3em; color: #8a94a3; font-size: 0.85em; }
"""

_ANISOTROPY_TERMS = (
    (
        "lambda1_over_lambda2",
        "λ1 / λ2",
        "How much stronger the first direction is than the second. Close to 1: p1 and p2 are nearly "
        "interchangeable, so the quadrant split is fragile.",
    ),
    (
        "condition_number",
        "condition number λmax / λmin",
        "Very large when some features are nearly linear combinations of others (directions with exactly "
        "zero variance, e.g. constant features, are left out).",
    ),
    (
        "fractional_anisotropy",
        "fractional anisotropy",
        "0 = the cloud is equally spread in every direction, 1 = all variance lies along one direction.",
    ),
    ("sphericity", "sphericity", "1 = a perfectly round (isotropic) cloud, towards 0 = elongated or flat."),
)


def render_report(path: Path, *, er: dict[str, Any], study: dict[str, Any], plots: Sequence[Path]) -> Path:
    """Write the self-contained HTML report of a run to ``path`` and return ``path``.

    ``er`` and ``study`` are the er.json and Q_study.json documents (missing sections and null
    numbers are tolerated); ``plots`` are PNG files, embedded in the given order.
    """
    run_id = str(study.get("run_id", "?"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Q4 report: run {_e(run_id)}</title>",
        f"<style>{_CSS}</style></head>",
        "<body>",
        f"<h1>Q4 report: run {_e(run_id)}</h1>",
        f'<p class="subtitle">mode <b>{_e(study.get("mode", "?"))}</b> · '
        f"{_count(_get(study, 'rows', 'valid'))} valid rows · "
        f"{len(study.get('features') or []):,} features · "
        f"model {_e(_get(study, 'model', 'source') or 'fitted')}</p>",
        _what_q4_does(),
        _warnings_section(study),
        _headline(er),
        _run_section(study),
        _energy_section(er),
        _figures_section(plots),
        _loadings_section(study),
        _effect_section(study),
        _anisotropy_section(study),
        _svd_section(study),
        f"<footer>Written by q4 {_e(__version__)} from <code>output/er.json</code> "
        f"(schema {_e(er.get('schema', '?'))}) and <code>output/Q_study.json</code> "
        f"(schema {_e(study.get('schema', '?'))}); those files hold every number in full precision."
        "</footer>",
        "</body></html>",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(part for part in parts if part), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------
# formatting


def _e(value: Any) -> str:
    """HTML-escape any value's text (quotes included)."""
    return html.escape(str(value), quote=True)


def _get(document: Any, *keys: str) -> Any:
    """``document[k1][k2]...``, or None when any level is missing or not a mapping."""
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _null(text: str = "n/a") -> str:
    return f'<span class="null">{_e(text)}</span>'


def _number(value: Any, digits: int = 4) -> str:
    """A number for a human: ints with separators, floats to ``digits`` significant digits."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return _null() if value is None else _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    value = value + 0.0  # -0.0 -> 0.0
    if math.isnan(value):
        return _null()
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    magnitude = abs(value)
    if value != 0 and (magnitude < 1e-3 or magnitude >= 1e12):
        return f"{value:.{digits - 1}e}"
    if magnitude >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:#.{digits}g}"


def _decibels(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return _null()
    return f"{value:+.2f}".replace("-", "−")


def _count(value: Any) -> str:
    return _number(value)


def _percent(value: Any) -> str:
    """A share as a percentage; a share that is neither 0 nor 1 never prints as 0.0% or 100.0%."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return _null()
    percent = 100 * value
    if 0 < abs(percent) < 0.05:
        return "&lt;0.0001%" if abs(percent) < 1e-4 else f"{percent:.2g}%"
    decimals = 1
    while decimals < 4 and value != 1 and round(percent, decimals) == 100:
        decimals += 1
    if value != 1 and round(percent, decimals) == 100:
        return "&gt;99.9999%"
    return f"{percent:.{decimals}f}%"


def _share(part: Any, whole: Any) -> str:
    if not isinstance(part, int | float) or not isinstance(whole, int | float) or not whole:
        return _null()
    return _percent(part / whole)


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    text_columns: int | Sequence[int] = 1,
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; cells are already-escaped HTML.

    ``text_columns`` (a count of leading columns, or column indices) are left-aligned, the rest right.
    """
    left = set(range(text_columns)) if isinstance(text_columns, int) else set(text_columns)

    def cell(tag: str, index: int, content: str) -> str:
        cls = ' class="text"' if index in left else ""
        return f"<{tag}{cls}>{content}</{tag}>"

    lines = ["<table>"]
    if any(header):
        lines.append("<tr>" + "".join(cell("th", i, _e(h)) for i, h in enumerate(header)) + "</tr>")
    for index, row in enumerate(rows):
        cls = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        lines.append(f"<tr{cls}>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _floats(values: Any) -> list[float | None]:
    if not isinstance(values, list):
        return []
    return [float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None for v in values]


# ----------------------------------------------------------------------------------------------------------
# sections


def _what_q4_does() -> str:
    return (
        '<p class="lead">Q4 standardizes every numeric feature, finds the two directions in which the '
        "rows vary most (the principal components p1 and p2), and places each row in one of four "
        "quadrants by the signs of its two scores s1 = z·p1 and s2 = z·p2. Rows with s1 ≥ 0 "
        "(quadrants Q1 and Q4) are kept as <b>signal</b>, rows with s1 &lt; 0 (Q2 and Q3) are set "
        "aside as <b>noise</b>, and the energy ‖z‖² of each side gives the signal-to-noise ratio.</p>"
    )


def _warnings_section(study: dict[str, Any]) -> str:
    items: list[str] = []
    codes = set()
    for warning in study.get("warnings") or []:
        if not isinstance(warning, dict):
            continue
        code = str(warning.get("code", "warning"))
        codes.add(code)
        critical = code == "degenerate_projectors"
        label = f'<span class="critical">{_e(code)}</span>' if critical else f"<b>{_e(code)}</b>"
        extra = " Do not read meaning into keep vs discard for this run." if critical else ""
        items.append(f"<li>{label}: {_e(warning.get('message', ''))}{extra}</li>")
    rows = study.get("rows") or {}
    rejected = rows.get("rejected")
    if isinstance(rejected, int) and rejected > 0 and "rejected_rows" not in codes:
        items.append(
            f"<li><b>rejected_rows</b>: {_count(rejected)} of {_count(rows.get('input'))} input rows "
            f"({_share(rejected, rows.get('input'))}) had a missing or non-finite feature value; they are "
            "not in keep or discard but listed with the reason in <code>output/Q_rejected.csv</code>.</li>"
        )
    constant = study.get("constant_columns") or []
    if constant and "constant_columns" not in codes:
        items.append(
            f"<li><b>constant_columns</b>: {len(constant)} feature(s) have a single value and carry no "
            f"information: {_name_list(constant)}.</li>"
        )
    if not items:
        return (
            '<div class="warnings none"><h2>Warnings</h2><p>No warnings: every input row was valid and '
            "the projectors are well defined.</p></div>"
        )
    return f'<div class="warnings"><h2>Warnings ({len(items)})</h2><ul>{"".join(items)}</ul></div>'


def _name_list(names: Sequence[Any], limit: int = TOP_FEATURES) -> str:
    shown = ", ".join(f"<code>{_e(n)}</code>" for n in names[:limit])
    return shown + (f" and {len(names) - limit:,} more" if len(names) > limit else "")


def _headline(er: dict[str, Any]) -> str:
    keep, discard = er.get("keep") or {}, er.get("discard") or {}
    snr_db = er.get("snr_db")
    snr = _null("n/a (the discard side has no energy)") if snr_db is None else f"{_decibels(snr_db)} dB"
    return (
        f'<p class="headline">Signal (keep): <b>{_percent(keep.get("fraction"))}</b> of the energy in '
        f"{_count(keep.get('rows'))} rows · noise (discard): <b>{_percent(discard.get('fraction'))}</b> "
        f"in {_count(discard.get('rows'))} rows · SNR <b>{snr}</b></p>"
    )


def _run_section(study: dict[str, Any]) -> str:
    source = study.get("input") or {}
    keys = source.get("keys") or []
    sums = source.get("sha256") or []
    if not isinstance(sums, list):
        sums = [sums]
    inputs = "<br>".join(f"<code>{_e(k)}</code>" for k in keys) or _null()
    checksums = "<br>".join(f"<code>{_e(s)}</code>" for s in sums) or _null()
    features = study.get("features") or []
    passthrough = study.get("passthrough_columns") or []
    about = _table(
        ("", ""),
        [
            ("run id", f"<code>{_e(study.get('run_id', '?'))}</code>"),
            ("mode", _e(study.get("mode", "?"))),
            ("input", inputs),
            ("format, size", f"{_e(source.get('format', '?'))}, {_number(source.get('bytes'))} bytes"),
            ("sha256", checksums),
            ("model", _e(_get(study, "model", "source") or "fitted")),
            (f"features ({len(features):,})", _name_list(features) if features else _null("none")),
            (
                f"passthrough columns ({len(passthrough):,})",
                _name_list(passthrough) if passthrough else "none",
            ),
        ],
        text_columns=2,
    )
    rows = study.get("rows") or {}
    total = rows.get("input")
    counts = _table(
        ("rows", "count", "share of input"),
        [
            ("input", _count(total), _share(total, total)),
            ("valid (every feature finite)", _count(rows.get("valid")), _share(rows.get("valid"), total)),
            ("rejected → Q_rejected", _count(rows.get("rejected")), _share(rows.get("rejected"), total)),
            ("keep (Q1+Q4) → Q_keep", _count(rows.get("keep")), _share(rows.get("keep"), total)),
            ("discard (Q2+Q3) → Q_discard", _count(rows.get("discard")), _share(rows.get("discard"), total)),
        ],
        row_classes=("", "", "", "keep", "discard"),
    )
    return f"<h2>The run</h2>\n{about}\n<h3>Rows</h3>\n{counts}"


def _energy_section(er: dict[str, Any]) -> str:
    quadrants = er.get("quadrants") or {}
    valid = sum(q.get("rows") or 0 for q in quadrants.values() if isinstance(q, dict))
    body: list[Sequence[str]] = []
    classes: list[str] = []
    for name in ("Q1", "Q2", "Q3", "Q4"):
        info = quadrants.get(name) or {}
        side = "keep" if name in ("Q1", "Q4") else "discard"
        body.append(
            (
                f"{name} ({side})",
                _count(info.get("rows")),
                _share(info.get("rows"), valid),
                _number(info.get("energy")),
                _percent(info.get("fraction")),
                _number(info.get("projected_energy")),
            )
        )
        classes.append(side)
    for name in ("keep", "discard"):
        info = er.get(name) or {}
        members = "+".join(str(q) for q in info.get("quadrants") or [])
        body.append(
            (
                f"<b>{name}</b> ({_e(members)})",
                _count(info.get("rows")),
                _share(info.get("rows"), valid),
                _number(info.get("energy")),
                _percent(info.get("fraction")),
                "",
            )
        )
        classes.append(f"{name} total")
    table = _table(
        ("part", "rows", "share of valid rows", "energy ‖z‖²", "share of total energy", "projected s1²+s2²"),
        body,
        row_classes=classes,
    )
    snr = _table(
        ("total energy", "SNR = keep / discard energy", "SNR (dB)"),
        [(_number(er.get("total_energy")), _number(er.get("snr")), _decibels(er.get("snr_db")))],
        text_columns=0,
    )
    return (
        "<h2>Energy split</h2>\n"
        '<p class="note">A row\'s energy is ‖z‖², the squared length of its standardized feature vector '
        "(all features); its projected energy s1² + s2² is the part captured by p1 and p2. Shares are of "
        "the total energy of the valid rows. SNR (dB) = 10·log10(SNR); 0 dB means equal energy.</p>\n"
        f"{table}\n{snr}"
    )


def _figures_section(plots: Sequence[Path]) -> str:
    figures = []
    for plot in plots:
        title, caption = CAPTIONS.get(plot.name, (plot.stem.replace("_", " "), ""))
        data = base64.b64encode(Path(plot).read_bytes()).decode("ascii")
        figures.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(title)}">'
            f"<figcaption><b>{_e(title)}.</b> {_e(caption)}</figcaption></figure>"
        )
    if not figures:
        return ""
    return "<h2>Figures</h2>\n" + "\n".join(figures)


def _top(values: Sequence[float | None], limit: int = TOP_FEATURES) -> list[int]:
    """Indices of the ``limit`` largest finite values, largest first (ties: input order)."""
    finite = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    finite.sort(key=lambda item: -item[1])
    return [i for i, _ in finite[:limit]]


def _feature_names(study: dict[str, Any], d: int) -> list[str]:
    names = [str(n) for n in study.get("features") or []]
    return names if len(names) == d else [f"feature {i}" for i in range(d)]


def _loadings_section(study: dict[str, Any]) -> str:
    loadings = _get(study, "study", "loadings")
    what = "loadings"
    if not loadings:
        loadings, what = study.get("projectors"), "projector weights"
    if not isinstance(loadings, list) or len(loadings) < 2:
        return ""
    first, second = _floats(loadings[0]), _floats(loadings[1])
    if len(first) != len(second) or not first:
        return ""
    names = _feature_names(study, len(first))
    strength = [
        None if a is None or b is None else math.hypot(a, b) for a, b in zip(first, second, strict=True)
    ]
    order = _top(strength)
    table = _table(
        ("rank", "feature", "p1", "p2", "√(p1² + p2²)"),
        [
            (
                str(r + 1),
                f"<code>{_e(names[i])}</code>",
                _number(first[i], 3),
                _number(second[i], 3),
                _number(strength[i], 3),
            )
            for r, i in enumerate(order)
        ],
        text_columns=2,
    )
    shown = f"The top {len(order)} of {len(first):,}" if len(order) < len(first) else f"All {len(order):,}"
    return (
        f'<h2>Features driving p1 and p2</h2>\n<p class="note">{shown} features by the size of their '
        f"{what} on the two leading components. The sign of the p1 column says which way a feature "
        "pushes a row: towards keep (positive) or towards discard (negative).</p>\n" + table
    )


def _effect_section(study: dict[str, Any]) -> str:
    section = _get(study, "study", "keep_vs_discard")
    if not isinstance(section, dict):
        return ""
    effect = _floats(section.get("effect_size"))
    if not effect:
        return ""
    names = _feature_names(study, len(effect))
    mean_keep = _floats(section.get("mean_keep"))
    mean_discard = _floats(section.get("mean_discard"))
    magnitude = [None if v is None else abs(v) for v in effect]
    order = _top(magnitude)

    def at(values: list[float | None], index: int) -> float | None:
        return values[index] if index < len(values) else None

    table = _table(
        ("rank", "feature", "mean keep", "mean discard", "effect size d"),
        [
            (
                str(r + 1),
                f"<code>{_e(names[i])}</code>",
                _number(at(mean_keep, i)),
                _number(at(mean_discard, i)),
                _number(effect[i], 3),
            )
            for r, i in enumerate(order)
        ],
        text_columns=2,
    )
    undefined = sum(v is None for v in effect)
    note = (
        f" {undefined:,} feature(s) have no defined effect size (no spread) and are not ranked."
        if undefined
        else ""
    )
    shown = f"The top {len(order)} of {len(effect):,}" if len(order) < len(effect) else f"All {len(order):,}"
    return (
        "<h2>Features that separate keep from discard</h2>\n"
        f'<p class="note">{shown} features by |Cohen\'s d|: the difference of the keep and discard '
        "means (original units) in units of their pooled standard deviation. |d| ≈ 0.2 is small, 0.5 "
        f"medium, 0.8 and more large.{note}</p>\n" + table + _quadrant_means(study, names, order)
    )


def _quadrant_means(study: dict[str, Any], names: Sequence[str], order: Sequence[int]) -> str:
    """Mean ± std per quadrant (original units) of the features in ``order``."""
    quadrants = _get(study, "study", "quadrants")
    if not isinstance(quadrants, dict) or not order:
        return ""
    present = [q for q in ("Q1", "Q2", "Q3", "Q4") if isinstance(quadrants.get(q), dict)]
    if not present:
        return ""

    def cell(quadrant: str, index: int) -> str:
        info = quadrants[quadrant]
        mean, std = _floats(info.get("mean")), _floats(info.get("std"))
        if index >= len(mean) or mean[index] is None:
            return _null()
        spread = f" ± {_number(std[index], 3)}" if index < len(std) and std[index] is not None else ""
        return f"{_number(mean[index])}{spread}"

    sides = {"Q1": "keep", "Q2": "discard", "Q3": "discard", "Q4": "keep"}
    table = _table(
        ("feature", *(f"{q} ({sides[q]})" for q in present)),
        [(f"<code>{_e(names[i])}</code>", *(cell(q, i) for q in present)) for i in order],
    )
    return (
        "\n<h3>The same features per quadrant</h3>\n"
        '<p class="note">Mean ± standard deviation of each quadrant\'s rows, in the original units.</p>\n'
        + table
    )


def _anisotropy_section(study: dict[str, Any]) -> str:
    anisotropy = _get(study, "study", "anisotropy")
    if not isinstance(anisotropy, dict):
        return ""
    overall = _table(
        ("measure", "value", "how to read it"),
        [(_e(label), _number(anisotropy.get(key)), _e(text)) for key, label, text in _ANISOTROPY_TERMS],
        text_columns=(0, 2),
    )
    per_quadrant = anisotropy.get("per_quadrant") or {}
    body = []
    classes = []
    for name in ("Q1", "Q2", "Q3", "Q4"):
        info = per_quadrant.get(name)
        if not isinstance(info, dict):
            continue
        body.append(
            (
                name,
                _count(info.get("rows")),
                _number(info.get("lambda1_over_lambda2")),
                _number(info.get("fractional_anisotropy")),
            )
        )
        classes.append("keep" if name in ("Q1", "Q4") else "discard")
    quadrant_table = (
        _table(("quadrant", "rows", "λ1 / λ2", "fractional anisotropy"), body, row_classes=classes)
        if body
        else ""
    )
    return (
        "<h2>Shape of the data (anisotropy)</h2>\n"
        '<p class="note">Computed from the eigenvalues λ of C = ZᵀZ/n, the correlation matrix of the '
        "standardized features. They say whether the data has clear leading directions, which the Q4 split "
        "relies on."
        "</p>\n"
        f"{overall}\n<h3>Per quadrant</h3>\n"
        '<p class="note">The same measures within each quadrant\'s rows: a quadrant much more elongated '
        "than the others has its own structure.</p>\n"
        f"{quadrant_table}"
    )


def _svd_section(study: dict[str, Any]) -> str:
    svd = study.get("svd")
    if not isinstance(svd, dict):
        return ""
    values = _floats(svd.get("singular_values"))
    ratios = _floats(svd.get("explained_variance_ratio"))
    summary = _table(
        ("k", "effective rank", "relative reconstruction error at k"),
        [
            (
                _number(svd.get("k")),
                _number(svd.get("effective_rank")),
                _number(svd.get("reconstruction_error")),
            )
        ],
        text_columns=0,
    )
    components = _table(
        ("component", "singular value", "explained variance"),
        [
            (str(i + 1), _number(v), _percent(ratios[i] if i < len(ratios) else None))
            for i, v in enumerate(values[:TOP_FEATURES])
        ],
        text_columns=0,
    )
    return (
        "<h2>Truncated SVD</h2>\n"
        '<p class="note">The standardized data approximated by its k leading singular components. The '
        "effective rank says how many directions carry the variance; the reconstruction error is the "
        "share of the data's norm the k components miss.</p>\n"
        f"{summary}\n{components}"
    )
