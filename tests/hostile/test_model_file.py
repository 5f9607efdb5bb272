"""Hostile ``q4_model.json`` files (``--model`` / ``model_key``): applying one succeeds or fails with a
:class:`q4.errors.Q4Error`, never anything else, and writes only under ``OUT/run=<id>/``."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from q4.errors import Q4Error
from q4.job import JobSpec, run_job

HOSTILE = settings.get_profile("hostile")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A real table and the real model an enhanced run fits on it."""
    base = tmp_path_factory.mktemp("model")
    x = np.random.default_rng(3).standard_normal((30, 3)) @ np.array(
        [[2.0, 0.5, 0], [0, 1.0, 0.3], [0, 0, 0.2]]
    )
    src = base / "data.csv"
    src.write_text("a,b,c\n" + "".join(",".join(map(repr, row)) + "\n" for row in x.tolist()))
    run_job([src], base / "fit" / "run=fit", JobSpec(run_id="fit", mode="enhanced"))
    doc = json.loads((base / "fit" / "run=fit" / "model" / "q4_model.json").read_text())
    return src, doc


def _paths(doc: Any) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, as key paths."""
    found: list[tuple[Any, ...]] = [()]
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += [(k, *p) for p in _paths(v)]
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += [(i, *p) for p in _paths(v)]
    return found


def _apply(tmp: Path, src: Path, model_text: str | bytes) -> None:
    model = tmp / "q4_model.json"
    model.write_bytes(
        model_text if isinstance(model_text, bytes) else model_text.encode("utf-8", "surrogatepass")
    )
    out = tmp / "out"
    try:
        result = run_job([src], out / "run=m", JobSpec(run_id="m", model_path=model))
        rows = result.rows
        assert rows["input"] == 30 and rows["keep"] + rows["discard"] + rows["rejected"] == 30
        _event("applied")
    except Q4Error as exc:
        _event(f"error: {exc.code}")
        assert exc.code in {"invalid_model", "model_mismatch", "too_few_features", "too_many_features"}, (
            exc.code
        )
        assert "\n" not in exc.message and exc.message.endswith(".")
    assert all(p.relative_to(out).parts[0] == "run=m" for p in out.rglob("*"))


def _event(name: str) -> None:
    with contextlib.suppress(InvalidArgument):
        event(name)


@settings(HOSTILE, max_examples=150)
@given(data=st.data())
def test_a_mutated_model_is_applied_or_refused(
    tmp_path_factory: pytest.TempPathFactory, fitted: tuple[Path, dict[str, Any]], data: st.DataObject
) -> None:
    src, good = fitted
    doc = copy.deepcopy(good)
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(st.one_of(st.floats(), st.integers(-3, 3), json_values))
    _apply(tmp_path_factory.mktemp("m"), src, json.dumps(doc))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="deep"),
        pytest.param("9" * 5000, id="5000-digits"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param("", id="empty"),
        pytest.param("null", id="null"),
    ],
)
def test_undecodable_model_files_are_invalid_model(tmp_path, fitted, text):
    _apply(tmp_path, fitted[0], text)
