"""``priorcase classify`` and ``priorcase eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from priorcase.cli.common import command_line, library_json, open_library, with_db


def _positive(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _knn_options(args: argparse.Namespace):
    from priorcase.library import KnnOptions

    return KnnOptions(
        k=args.k,
        weights=args.knn_weights,
        temperature=args.knn_temperature,
        prior_correction=args.prior_correction,
    )


def _add_knn_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=int, default=10, help="neighbours that vote (kNN)")
    p.add_argument(
        "--knn-weights",
        choices=["uniform", "similarity"],
        default="uniform",
        help="one vote each, or softmax(similarity / temperature)",
    )
    p.add_argument("--knn-temperature", type=float, default=0.1)
    p.add_argument(
        "--prior-correction",
        action="store_true",
        help="divide kNN votes by each class's share of the library",
    )


def cmd_classify(args: argparse.Namespace) -> int:
    from priorcase.evaluation.experiment import resolve_methods

    pc = open_library(args)
    methods = resolve_methods(args.method)
    if args.evaluate:
        pc.classifiers.evaluate(args.label, tuple(methods), args.kind)
    result = pc.classify(
        args.image,
        args.label,
        tuple(methods),
        kind=args.kind,
        knn=_knn_options(args),
        exclude_same_patient=args.exclude_same_patient,
        alpha=args.alpha,
    )
    if args.json:
        out = result.to_json(str(args.image))
        print(json.dumps({"query": out.pop("query"), "library": library_json(pc), **out}))
        return 0
    print(f"{args.image}: {args.label}")
    if result.query_in_library:
        print(
            f"  note: this image is stored in the library as {result.query_in_library}; "
            "the heads below were trained on it"
        )
    ref = result.reference
    if ref is not None and ref.top_score is not None:
        print(
            f"  best match {ref.top_score:.3f}, percentile {ref.percentile:.1f} of the library's "
            f"own nearest-neighbour scores: {ref.status}"
        )
    if result.abstain:
        print(f"  abstains: {result.abstain_reason}")
        return 0
    print(f"  headline: {result.headline()}")
    for prediction in result.predictions:
        if prediction.error:
            print(f"  {prediction.method:<10} unavailable: {prediction.error}")
            continue
        probs = ", ".join(
            f"{c} {p:.2f}" for c, p in sorted(prediction.probabilities.items(), key=lambda x: -x[1])
        )
        kind = "calibrated" if prediction.calibrated else "uncalibrated"
        print(
            f"  {prediction.method:<10} {probs} ({kind}); {1 - args.alpha:.0%} set "
            f"{{{', '.join(prediction.prediction_set)}}}  ({prediction.explanation})"
        )
        if prediction.evaluated:
            e = prediction.evaluated
            auc = "n/a" if e.get("auc") is None else f"{e['auc']:.3f}"
            figures = f"AUC {auc}, accuracy {e['accuracy']:.3f}, n={e['n']}"
            if e.get("of"):  # a big library is evaluated on a sample
                figures += f" (a stratified, patient-grouped sample of {e['of']} cases)"
            print(f"  {'':<10} cross-validated on this library: {figures}")
    if result.neighbours:
        print(
            "  voting neighbours: "
            + ", ".join(
                f"{h.id} ({h.labels.get(args.label)}, {h.score:.3f})" for h in result.neighbours
            )
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from priorcase.evaluation.experiment import cross_validate, holdout, resolve_methods
    from priorcase.evaluation.report import format_table, write_html_report

    pc = open_library(args)
    methods = resolve_methods(args.method)
    common = dict(
        label=args.label,
        methods=methods,
        kind=args.kind,
        where=args.where,
        positive=_positive(args.positive),
        knn=_knn_options(args),
        n_boot=args.bootstrap,
        progress=not args.json,
        alpha=args.alpha,
    )
    if args.queries:
        if args.labels is None:
            raise SystemExit("priorcase eval: --queries needs --labels CSV")
        if args.case_fusion:
            raise SystemExit("priorcase eval: --case-fusion is cross-validated (drop --queries)")
        evaluation = holdout(pc, args.queries, args.labels, **common)
    else:
        evaluation = cross_validate(
            pc, n_splits=args.cv, by=args.by, case_fusion=args.case_fusion, **common
        )
    evaluation.meta["command"] = command_line()
    if args.report:
        tables = {f"operating points: {m}": rows for m, rows in evaluation.thresholds.items()}
        tables |= {f"subgroups: {name}": rows for name, rows in evaluation.subgroups.items()}
        write_html_report(
            args.report,
            f"priorcase eval: {args.label} ({evaluation.mode})",
            evaluation.results,
            tables,
            {**evaluation.meta, "n": evaluation.n},
        )
    if args.json:
        print(json.dumps(evaluation.to_json()))
        return 0
    meta = evaluation.meta
    print(
        f"{args.label} ({evaluation.mode}, {evaluation.kind}, n={evaluation.n}, "
        f"classes {meta['class_counts']}, encoder {meta['encoder']})"
    )
    print(
        f"table version {meta['table_version']}, encoder weights "
        f"{meta['encoder_weights_sha256'][:12]}, fold seed {meta['fold_seed']}, "
        f"priorcase {meta['priorcase']}"
    )
    if meta.get("positive"):
        print(f"positive class: {meta['positive']} ({meta['positive_chosen_by']})")
    print(format_table(evaluation.results))
    print(
        f"probabilities calibrated on training folds only (grouped); coverage and set size of "
        f"conformal sets at alpha={meta['alpha']}"
    )
    if evaluation.cases:
        print(
            f"\ncase level ({evaluation.cases[0].n} cases = {meta['group_column']}; a case "
            "is positive when any film is; score = max over its films' out-of-fold scores):"
        )
        print(format_table(evaluation.cases))
    for method, rows in evaluation.thresholds.items():
        print(
            f"\noperating points, {method} (positive = {rows[0]['positive']}; thresholds chosen "
            "on each fold's training rows, scored on its held-out rows):"
        )
        for r in rows:
            print(
                f"  {r['target']:<14} threshold {r['threshold']:.3f}  sens {r['sensitivity']:.2f}"
                f"  spec {r['specificity']:.2f}  TP {r['TP']} FP {r['FP']} "
                f"TN {r['TN']} FN {r['FN']}"
            )
    for name, rows in evaluation.subgroups.items():
        print(f"\nsubgroups, {name}:")
        for r in rows:
            auc = "n/a" if r["auc"] is None else f"{r['auc']:.3f}"
            print(f"  {r['subgroup']:<12} n={r['n']:<4} accuracy {r['accuracy']:.3f}  AUC {auc}")
    if args.report:
        print(f"\nreport: {args.report}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the classify and eval sub-commands."""
    p = sub.add_parser("classify", help="class probabilities for one new image, per method")
    with_db(p)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--label", required=True, help="label column, e.g. pathology")
    p.add_argument(
        "--method",
        default="knn,logreg,zeroshot",
        help="comma list of knn, logreg, svm, zeroshot, similarity, ensemble, or all",
    )
    p.add_argument("--kind", choices=["image", "roi"], default="image")
    _add_knn_arguments(p)
    p.add_argument(
        "--exclude-same-patient",
        action="store_true",
        help="leave the query's own patient out of the kNN vote and the reference check",
    )
    p.add_argument("--alpha", type=float, default=0.1, help="conformal sets at level 1 - alpha")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="cross-validate the methods on this library first (once per table version)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", help="patient-grouped cross-validation or library-vs-queries")
    with_db(p)
    p.add_argument("--label", required=True)
    p.add_argument("--method", default="all")
    p.add_argument("--kind", choices=["image", "roi"], default="image")
    p.add_argument("--where", help="only rows matching this SQL predicate")
    p.add_argument(
        "--positive",
        help="comma list of values that form the positive class (binary labels otherwise take "
        "the class not named like 'normal', and the output says so)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.1,
        help="conformal sets miss the true class at most this often",
    )
    p.add_argument("--cv", type=int, default=5, help="folds (grouped by the index's group key)")
    p.add_argument("--queries", type=Path, help="folder of query images (holdout mode)")
    p.add_argument("--labels", type=Path, help="labels CSV of the query images")
    p.add_argument("--by", action="append", default=[], help="subgroup column (repeatable)")
    p.add_argument(
        "--case-fusion",
        action="store_true",
        help="also fuse each film with the same patient's other breast (<method>+contralateral: "
        "own score, the other side's, their difference, mirrored tile differences) and score "
        "every method per case (patient: positive when any film is)",
    )
    _add_knn_arguments(p)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for AUC CI")
    p.add_argument("--report", type=Path, help="write an HTML report with ROC and confusion plots")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
