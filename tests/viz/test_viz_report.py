"""report.html: one self-contained, escaped, deterministic file that explains the run."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from q4 import viz
from q4.report import TOP_FEATURES, render_report
from support.viz import FullRun, make_full_run

VOID_TAGS = {"meta", "img", "br", "hr", "link", "input"}
BLOCK_TAGS = {"td", "th", "tr", "p", "li", "br", "h1", "h2", "h3", "div", "table", "figcaption", "style"}


class TagChecker(HTMLParser):
    """Collects tags, checks nesting, and keeps the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in BLOCK_TAGS:
            self.text.append(" ")
        if tag not in VOID_TAGS:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> TagChecker:
    checker = TagChecker()
    checker.feed(path.read_text(encoding="utf-8"))
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert checker.stack == [], checker.stack
    return checker


def visible_text(path: Path) -> str:
    return re.sub(r"\s+", " ", "".join(parse(path).text))


def build(run: FullRun, run_dir: Path, *, with_plots: bool = True) -> Path:
    viz_dir = run_dir / "viz"
    plots: list[Path] = []
    if with_plots:
        plots = viz.render_plots(
            viz_dir,
            er=run.er,
            study=run.study,
            scores=run.scores,
            quadrants=run.quadrants,
            svd_scores=run.svd_scores,
            correlation=run.correlation,
        )
    return render_report(viz_dir / "report.html", er=run.er, study=run.study, plots=plots)


def test_report_is_one_self_contained_file_with_every_plot_embedded(
    tmp_path: Path, full_run: FullRun
) -> None:
    # GIVEN a full-mode run's plots WHEN the report is written
    report = build(full_run, tmp_path)
    html = report.read_text(encoding="utf-8")
    checker = parse(report)
    # THEN it is well-formed HTML with no script, no external fetch, and the PNGs inline
    assert report == tmp_path / "viz" / "report.html"
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.IGNORECASE)
    assert "@import" not in html and "url(" not in html
    images = [attrs for tag, attrs in checker.tags if tag == "img"]
    assert len(images) == len(viz.PLOT_FILES)
    for attrs, name in zip(images, viz.PLOT_FILES, strict=True):
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (tmp_path / "viz" / name).read_bytes()
        assert attrs["alt"]


def test_report_states_the_run_and_its_numbers(tmp_path: Path) -> None:
    run = make_full_run(n=600, d=6, rejected=4)
    text = visible_text(build(run, tmp_path))
    rows = run.study["rows"]
    assert "Q4 report: run 2025-08-25-001" in text
    assert "run=2025-08-25-001/input/mydata.csv" in text
    assert "123,456 bytes" in text
    for label, key in [("input", "input"), ("rejected → Q_rejected", "rejected")]:
        assert f"{label} {rows[key]:,}" in text
    assert f"keep (Q1+Q4) → Q_keep {rows['keep']:,}" in text
    assert f"discard (Q2+Q3) → Q_discard {rows['discard']:,}" in text
    for name in ("Q1", "Q2", "Q3", "Q4"):
        quadrant = run.er["quadrants"][name]
        assert re.search(rf"{name} \((keep|discard)\) {quadrant['rows']:,} ", text)
        assert f"{100 * quadrant['fraction']:.1f}%" in text
    snr_db = f"{run.er['snr_db']:+.2f}".replace("-", "−")
    assert f"SNR {snr_db} dB" in text
    assert "kept as signal" in text and "set aside as noise" in text
    assert "rejected_rows: 4 of 604 input rows" in text


def test_top_features_are_ranked_and_capped(tmp_path: Path) -> None:
    # GIVEN 3,000 features whose loadings and effect sizes are known
    d = 3_000
    run = make_full_run(n=40, d=3, with_svd=False)
    rng = np.random.default_rng(7)
    first, second = rng.uniform(-0.1, 0.1, d), rng.uniform(-0.1, 0.1, d)
    first[1234], second[77] = 0.99, -0.95
    effect: list[Any] = list(rng.uniform(-0.3, 0.3, d))
    effect[2500], effect[5] = -4.0, None
    run.study["features"] = [f"gene_{i}" for i in range(d)]
    run.study["study"]["loadings"] = [first.tolist(), second.tolist()]
    kvd = run.study["study"]["keep_vs_discard"]
    kvd["effect_size"] = effect
    kvd["mean_keep"] = kvd["mean_discard"] = [0.0] * d
    # WHEN the report is written (no plots needed)
    report = build(run, tmp_path, with_plots=False)
    html = report.read_text(encoding="utf-8")
    text = visible_text(report)
    # THEN each table lists the top TOP_FEATURES, strongest first, with the cap stated
    assert f"The top {TOP_FEATURES} of 3,000 features by the size of their loadings" in text
    assert f"The top {TOP_FEATURES} of 3,000 features by |Cohen's d|" in text
    assert "1 feature(s) have no defined effect size" in text
    ranked = re.findall(r'<td class="text">(\d+)</td><td class="text"><code>gene_', html)
    assert ranked == [str(rank) for rank in range(1, TOP_FEATURES + 1)] * 2
    assert "1 gene_1234 0.990" in text
    assert "2 gene_77 " in text
    assert "1 gene_2500 " in text and "−4.00" not in text and "-4.00" in text


def test_user_strings_are_escaped(tmp_path: Path) -> None:
    # GIVEN column names, keys and warnings carrying markup
    evil = '<script>alert("x")</script>'
    run = make_full_run(n=60, d=3, features=[evil, "a&b", "<img src=x onerror=alert(1)>"])
    run.study["run_id"] = "r<1>"
    run.study["input"]["keys"] = ['run=r/input/"quoted"<b>.csv']
    run.study["passthrough_columns"] = ["</table>"]
    run.study["constant_columns"] = ["<i>c</i>"]
    run.study["warnings"] = [{"code": "<u>x</u>", "message": "<style>body{display:none}</style>"}]
    run.study["model"] = {"source": "<iframe>"}
    # WHEN rendered
    report = build(run, tmp_path)
    html = report.read_text(encoding="utf-8")
    # THEN the markup stays text
    lowered = html.lower()
    for tag in ("<script", "<img src=x", "<iframe", "<u>", "<i>c", "<b>.csv"):
        assert tag not in lowered, tag
    assert lowered.count("<style>") == 1 and lowered.count("</table>") == html.count("<table>")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "a&amp;b" in html
    text = visible_text(report)
    assert evil in text and "</table>" in text and "r<1>" in text


def test_report_bytes_are_deterministic(tmp_path: Path, full_run: FullRun) -> None:
    one = build(full_run, tmp_path / "a")
    two = build(make_full_run(), tmp_path / "b")
    assert one.read_bytes() == two.read_bytes()
    assert not re.search(r"20\d\d-\d\d-\d\dT\d\d:", one.read_text(encoding="utf-8"))


def test_warnings_are_prominent(tmp_path: Path) -> None:
    run = make_full_run(n=100, d=5, constant=2, rejected=3)
    run.study["warnings"].append(
        {"code": "degenerate_projectors", "message": "lambda1 equals lambda2 to 1e-12 relative."}
    )
    html = build(run, tmp_path, with_plots=False).read_text(encoding="utf-8")
    box = html[html.index('<div class="warnings">') : html.index("</div>")]
    assert "Warnings (3)" in box
    assert '<span class="critical">degenerate_projectors</span>' in box
    assert "constant_columns" in box and "rejected_rows" in box
    assert html.index('<div class="warnings">') < html.index("<h2>The run</h2>")


def test_no_warnings_says_so(tmp_path: Path, full_run: FullRun) -> None:
    html = build(full_run, tmp_path, with_plots=False).read_text(encoding="utf-8")
    assert '<div class="warnings none"><h2>Warnings</h2><p>No warnings:' in html
    assert '<div class="warnings">' not in html


def test_null_numbers_read_as_not_available(tmp_path: Path) -> None:
    run = make_full_run(n=60, d=4)
    run.er["snr"] = run.er["snr_db"] = None
    run.er["quadrants"]["Q3"]["energy"] = None
    run.study["study"]["anisotropy"]["condition_number"] = None
    run.study["study"]["keep_vs_discard"]["effect_size"] = [None] * 4
    text = visible_text(build(run, tmp_path))
    assert "SNR n/a (the discard side has no energy)" in text
    assert "condition number λmax / λmin n/a" in text
    assert "4 feature(s) have no defined effect size" in text
    assert "None" not in text and "nan" not in text.lower().replace("nanmax", "")


@pytest.mark.parametrize("drop", [("svd", "study"), ("svd", "study", "warnings", "input", "rows", "model")])
def test_sparse_studies_are_tolerated(tmp_path: Path, drop: tuple[str, ...]) -> None:
    # GIVEN a standard-mode-like study without the svd / study sections (and worse)
    run = make_full_run(n=60, d=3, with_svd=False)
    for key in drop:
        del run.study[key]
    # WHEN rendered THEN the report still explains what it has and omits the rest
    report = build(run, tmp_path)
    text = visible_text(report)
    assert "Truncated SVD" not in text and "anisotropy" not in text
    assert "Features driving p1 and p2" in text and "projector weights" in text
    assert "Energy split" in text


def test_empty_documents_still_give_a_report(tmp_path: Path) -> None:
    report = render_report(tmp_path / "report.html", er={}, study={}, plots=[])
    text = visible_text(report)
    assert "Q4 report: run ?" in text and "Energy split" in text


def test_tiny_shares_never_print_as_zero_or_hundred_percent(tmp_path: Path) -> None:
    run = make_full_run(n=19_999, d=3, rejected=1, with_svd=False)
    text = visible_text(build(run, tmp_path, with_plots=False))
    assert "rejected → Q_rejected 1 0.005% " in text
    assert "valid (every feature finite) 19,999 99.995% " in text
    assert "input 20,000 100.0% " in text


def test_top_effect_features_are_also_shown_per_quadrant(tmp_path: Path) -> None:
    run = make_full_run(n=400, d=5)
    effect = run.study["study"]["keep_vs_discard"]["effect_size"]
    top = int(np.argmax(np.abs(effect)))
    text = visible_text(build(run, tmp_path, with_plots=False))
    section = text[text.index("The same features per quadrant") :]
    q3 = run.study["study"]["quadrants"]["Q3"]
    assert "Q1 (keep) Q2 (discard) Q3 (discard) Q4 (keep)" in section
    row = section[section.index(run.study["features"][top]) :]
    assert f"{q3['mean'][top]:#.4g} ± {q3['std'][top]:#.3g}" in row.split(run.study["features"][top])[1][:200]
