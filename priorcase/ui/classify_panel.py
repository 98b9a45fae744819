"""Classification panel: which label columns it offers, and what it shows for one query.

The probabilities come from ``PriorCase.classifiers`` (one implementation for the CLI, the
Python API and the UI); this module only adapts them to the page: a headline naming the query
(or "No close reference in the library" / "Uncertain"), then per method a split bar of its
calibrated probabilities with the conformal prediction set, its cross-validated AUC and
accuracy on this library (computed once per table version in a background thread), and a
flag when its output is just the library's class prior.

Nothing slow runs in the request: a head not yet fitted on this table version is fitted in a
background thread (saved heads are loaded from disk there) and the panel says so; the page
polls until every head has answered and the figures are in (see ``busy``).
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import threading
from collections.abc import Callable

import numpy as np

from priorcase.api import PriorCase
from priorcase.errors import PriorcaseError
from priorcase.ingest.pipeline import ROI_TYPE
from priorcase.library import Classification, KnnOptions, MethodPrediction

log = logging.getLogger(__name__)

METHOD_TITLES = {
    "knn": "kNN vote (similar prior cases)",
    "logreg": "Logistic head (trained on library embeddings)",
    "zeroshot": "Text prompts (zero-shot)",
}
DEFAULT_METHODS = ("knn", "logreg", "zeroshot")
KNN_K = 10
BACKGROUND_NICE = 10  # background fits and cross-validation yield the CPU to requests
COLOURS = ("#3b6ea8", "#d08c2f", "#5a9e5a", "#b04a4a", "#7a5aa8", "#4a9ea0", "#8c8c8c")


class ClassifyPanel:
    """The panel's view of one library's classifiers."""

    def __init__(self, pc: PriorCase, k: int = KNN_K) -> None:
        self.pc = pc
        self.k = k
        self._threads: dict[tuple, threading.Thread] = {}
        # (job, table version, label, kind, method) -> why a background job failed
        self._failed: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def columns(self, kind: str | None = "image") -> list[str]:
        """Label columns with at least two classes among rows of ``kind``."""
        manifest = self.pc.store.manifest
        if manifest is None:
            return []
        out = []
        for column in manifest.label_columns:
            if column == manifest.group_column or (column == ROI_TYPE and kind == "image"):
                continue
            values = {v for v in self.pc.store.column_values(column, kind).values() if v}
            if len(values) >= 2:
                out.append(column)
        return out

    def classify(
        self,
        vector: np.ndarray,
        column: str,
        kind: str | None = "image",
        methods: tuple[str, ...] = DEFAULT_METHODS,
        exclude_group: str | None = None,
        query_id: str | None = None,
        wait: bool = True,
    ) -> Classification:
        """Every method's answer (or abstention, or error) for one query. With ``wait=False``
        the methods not yet fitted are left out (see :meth:`pending`) and fitted in the
        background."""
        kind = kind or "image"
        self.evaluate_in_background(column, kind, methods)
        if not wait:
            self.fit_in_background(column, kind, methods)
            methods = tuple(m for m in methods if m not in self.pending(column, kind, methods))
        return self.pc.classifiers.classify(
            vector, column, tuple(methods), kind, KnnOptions(k=self.k), exclude_group, query_id
        )

    def pending(
        self, column: str, kind: str = "image", methods: tuple[str, ...] = DEFAULT_METHODS
    ) -> tuple[str, ...]:
        """The methods whose head is not yet fitted (in memory) on this table version."""
        knn = KnnOptions(k=self.k)
        ready, kind = self.pc.classifiers.ready, kind or "image"
        here = ("fit", self.pc.store.version, column, kind)
        failed = {k[4] for k in self._failed if k[:4] == here}
        # a failed fit is not pending: the request fits it again and reports the error
        return tuple(m for m in methods if not ready(m, column, kind, knn) and m not in failed)

    def unavailable(self, column: str, kind: str = "image") -> dict[str, str]:
        """Methods whose cross-validated figures could not be computed, and why."""
        here = ("evaluate", self.pc.store.version, column, kind)
        return {k[4]: why for k, why in self._failed.items() if k[:4] == here}

    def busy(
        self, column: str, kind: str = "image", methods: tuple[str, ...] = DEFAULT_METHODS
    ) -> bool:
        """Whether a background fit or cross-validation for ``column`` is still running."""
        version = self.pc.store.version
        with self._lock:
            return any(
                t.is_alive() for k, t in self._threads.items() if k[1:4] == (version, column, kind)
            )

    def fit_in_background(
        self, column: str, kind: str = "image", methods: tuple[str, ...] = DEFAULT_METHODS
    ) -> threading.Thread | None:
        """Start fitting (or loading the saved) heads of ``methods`` not yet in memory."""
        missing = self.pending(column, kind, methods)
        if not missing:
            return None
        knn = KnnOptions(k=self.k)
        version = self.pc.store.version

        def run() -> None:
            for method in missing:  # kNN first: it is the quickest and names the neighbours
                try:
                    self.pc.classifiers.fitted(method, column, kind, knn)
                except Exception as err:  # the request that asks for it again reports it
                    self._failed[("fit", version, column, kind, method)] = str(err)
                    log.warning("background fit of %s failed: %s", method, err)

        return self._start("fit", column, kind, missing, run)

    def evaluate_in_background(
        self, column: str, kind: str = "image", methods: tuple[str, ...] = DEFAULT_METHODS
    ) -> threading.Thread | None:
        """Start cross-validating ``methods`` on this table version unless done or running."""
        if all(m in self.pc.classifiers.evaluated(column, kind) for m in methods):
            return None

        version = self.pc.store.version

        def run() -> None:
            for method in methods:  # one at a time: the quick ones' figures show first
                key = ("evaluate", version, column, kind, method)
                try:
                    self.pc.classifiers.evaluate(column, (method,), kind)
                except (PriorcaseError, ValueError) as err:  # e.g. too few patients
                    self._failed[key] = str(err)
                    log.warning("cross-validation of %s on this library: %s", method, err)
                except Exception:
                    self._failed[key] = "the computation failed (see the server log)"
                    log.exception("background cross-validation of %s failed", method)

        return self._start("evaluate", column, kind, tuple(methods), run)

    def _start(
        self, job: str, column: str, kind: str, methods: tuple, run: Callable[[], None]
    ) -> threading.Thread | None:
        """One thread per job, table version, label, kind and methods (None: already running)."""
        key = (job, self.pc.store.version, column, kind, methods)

        def yielding() -> None:
            # Linux niceness is per thread: requests keep the CPU before this job
            with contextlib.suppress(AttributeError, OSError):
                tid = threading.get_native_id()
                nice = os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE
                os.setpriority(os.PRIO_PROCESS, tid, min(nice, 19))
            run()

        with self._lock:
            if key in self._threads:
                return None
            thread = threading.Thread(target=yielding, daemon=True, name=f"priorcase-{job}")
            self._threads[key] = thread
        thread.start()
        return thread


def split_bar(prediction: MethodPrediction) -> str:
    """HTML: one bar split by class probability, and the prediction set beneath it."""
    items = sorted(prediction.probabilities.items())
    parts = []
    for n, (cls, p) in enumerate(items):
        colour = COLOURS[n % len(COLOURS)]
        label = f"{html.escape(cls)} {p:.0%}" if p >= 0.12 else ""
        parts.append(
            f"<div title='{html.escape(cls)}: {p:.1%}' style='width:{100 * p:.2f}%;"
            f"background:{colour};color:#fff;overflow:hidden;white-space:nowrap;"
            f"font-size:.8rem;padding:2px 0;text-align:center'>{label}</div>"
        )
    legend = ", ".join(f"{html.escape(c)} {p:.1%}" for c, p in items)
    members = ", ".join(html.escape(c) for c in prediction.prediction_set) or "-"
    kind = "calibrated" if prediction.calibrated else "not calibrated"
    return (
        "<div class='pc-bar' style='display:flex;width:100%;border-radius:4px;"
        f"overflow:hidden'>{''.join(parts)}</div>"
        f"<div class='pc-legend' style='font-size:.8rem'>{legend} ({kind})</div>"
        f"<div class='pc-set'>prediction set (90%): <b>{{{members}}}</b></div>"
    )


def _figures(prediction: MethodPrediction, unavailable: str | None = None) -> str:
    return f"_{html.escape(figures_line(prediction.evaluated, unavailable))}_"


def figures_line(e: dict | None, unavailable: str | None = None) -> str:
    """ "Cross-validated on this library: AUC …, accuracy … (n=…)", naming a sample if one."""
    if not e and unavailable:
        return f"No cross-validated figures on this library: {unavailable}."
    if not e:
        return "Cross-validated figures on this library: evaluating… (in the background)."
    auc = "n/a" if e.get("auc") is None else f"{e['auc']:.3f}"
    n = f"n={e['n']}"
    if e.get("of"):
        n += f", a stratified, patient-grouped sample of the library's {e['of']} cases"
    return f"Cross-validated on this library: AUC {auc}, accuracy {e['accuracy']:.3f} ({n})."


PENDING = (
    "<span class='pc-pending'>Fitting this method on the library (first use of this library "
    "version); its answer appears here when ready.</span>"
)


def panel_outputs(
    result: Classification | None,
    query_name: str | None,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    message: str | None = None,
    pending: tuple[str, ...] = (),
    unavailable: dict[str, str] | None = None,
) -> list[str]:
    """Values for [headline, (bar, explanation) per method]; empty with ``message`` when there
    is no answer (no query, a failed query, a text search); ``pending`` methods say they are
    being fitted; ``unavailable`` names why a method has no cross-validated figures."""
    if result is None:
        return [message or "_No image query: the panel is empty._"] + ["", ""] * len(methods)
    name = html.escape(query_name or "query")
    headline = result.headline()
    waiting = pending and not any(p.probabilities for p in result.predictions)
    if result.abstain:
        head = f"### No close reference in the library\nQuery **{name}**: {result.abstain_reason}"
    elif waiting:
        head = (
            f"### Fitting the classifiers on this library…\nQuery **{name}** ({result.label}): "
            "each method's answer appears below when it is ready (first use of this library "
            "version)."
        )
    elif headline == "Uncertain":
        head = (
            f"### Uncertain\nQuery **{name}** ({result.label}): the methods' prediction sets hold "
            "more than one class, or a head only repeats the library prior."
        )
    else:
        head = f"### {html.escape(headline)}\nQuery **{name}** ({result.label})"
    ref = result.reference
    if ref is not None and ref.top_score is not None and ref.percentile is not None:
        head += (
            f"\n\nBest match {ref.top_score:.3f}: percentile {ref.percentile:.0f} of this "
            "library's own nearest-neighbour scores."
        )
    by_method = {p.method: p for p in result.predictions}
    why = unavailable or {}
    out = [head]
    for method in methods:
        p = by_method.get(method)
        if p is None:
            out += ["", PENDING if method in pending else ""]
        elif p.error:
            out += ["", f"<span class='pc-error'>⚠ {html.escape(p.error)}</span>"]
        elif result.abstain:
            out += ["", f"Abstains. {_figures(p, why.get(method))}"]
        else:
            flag = (
                "\n\n**⚠ output equals the library's class prior: this head learnt nothing "
                "from this image.**"
                if p.prior_like
                else ""
            )
            figures = _figures(p, why.get(method))
            out += [split_bar(p), f"{html.escape(p.explanation)}{flag}\n\n{figures}"]
    return out
