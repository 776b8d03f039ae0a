"""``tokenshift figures``, ``figure-overview``, ``explorer`` and ``report``: the paper's figures, the
token explorer and the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenshift.cli.common import kinds, once, output, pair_kinds, settings
from tokenshift.io import InputError
from tokenshift.options import add_options
from tokenshift.registry import DIVERGENCE_FIGURES, report_files


def register(sub) -> None:
    fg = sub.add_parser(
        "figures",
        help="the paper's figures for one pair and dataset, from its tables",
        description="Figures 2-6 (positional concentration, entropy vs divergence, reallocation, cross-sampling "
        "accuracy per budget, an example response coloured by JS) as PNG (200 dpi) and PDF in --out-dir.",
    )
    for name in DIVERGENCE_FIGURES:
        fg.add_argument(f"--{name}", required=True, help=f"the pair's {name} table (tokenshift divergence)")
    fg.add_argument(
        "--accuracy", help="a cross-sampled pair's accuracy table (tokenshift accuracy); with --crosssample"
    )
    fg.add_argument("--crosssample", help="its cross-sampling table (tokenshift crosssample-table), with --accuracy")
    fg.add_argument("--example-run", help="a forward cross-sampling run to take the example response from")
    fg.add_argument("--example-baseline", help="the same direction's budget-0 run (prefers responses it got wrong)")
    fg.add_argument("--tokenizer", help="checkpoint (directory or manifest) whose tokenizer decodes the example")
    output(fg, "--out-dir", "a directory", "directory for the figures", directory=True)
    output(
        fg,
        "--example-table",
        "a .parquet file path",
        "the example response's tokens to write (figure 6's data; no rows where there is no example)",
        required=False,
    )
    fg.set_defaults(func=_figures)

    fo = sub.add_parser(
        "figure-overview",
        help="figure 1: the JS percentile curve of every pair on one axis",
        description="The sparsity figure: JS percentile curves (log y) of all pairs, RLVR and "
        "SFT told apart by line style, the share under 1e-3 marked.",
    )
    fo.add_argument("inputs", nargs="+", help="sparsity tables (divergence/sparsity.parquet)")
    pair_kinds(fo)
    output(fo, "--out", "a file path without suffix", "output path without suffix (writes .png and .pdf)")
    fo.set_defaults(func=_overview)

    from tokenshift.settings import ExplorerConfig

    ex = sub.add_parser(
        "explorer",
        help="explorer.html: browse responses token by token, coloured by JS, with both models' candidates",
        description="A self-contained HTML page (data inline, no network, works from a file:// URL): pick a pair, "
        "dataset and the base or RL rollouts or a cross-sampling run, then a response; tokens are shaded by JS; "
        "hovering or focusing one shows both models' statistics and top candidates there. A sample of "
        "--responses-per-group responses of each group is embedded.",
    )
    ex.add_argument(
        "--scores",
        nargs=4,
        action="append",
        required=True,
        metavar=("PAIR", "DATASET", "BASE", "RL"),
        help="a pair's per-token scores (tokenshift score) of its base and RL rollouts on a dataset; once each",
    )
    ex.add_argument("--runs", nargs="*", default=[], help="cross-sampling runs (their rows name pair and dataset)")
    ex.add_argument("--problems", nargs="*", default=[], help="each dataset's problems table (tokenshift dataset)")
    ex.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="PAIR=CHECKPOINT",
        help="a pair's checkpoint (directory or manifest) whose tokenizer decodes its tokens; one per pair",
    )
    output(ex, "--out", "an .html file path", "explorer.html to write")
    add_options(ex, ExplorerConfig, title="explorer (config `explorer:`)")
    ex.set_defaults(func=_explorer)

    rp = sub.add_parser(
        "report",
        help="report.html and summary.json from the tables and figures",
        description="A self-contained HTML report (figures embedded, headline numbers in words, the "
        "accuracy and cross-sampling tables, the config) and summary.json with the same "
        "numbers, machine-readable.",
    )
    rp.add_argument(
        "--result",
        nargs="+",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help=f"one pair and dataset's tables and figures (a --result for each): {', '.join(report_files(False))}; "
        f"a cross-sampled pair's also {', '.join(n for n in report_files(True) if n not in report_files(False))}",
    )
    pair_kinds(rp)
    rp.add_argument("--overview", nargs="*", default=[], help="overview figure PNGs (figure 1)")
    rp.add_argument("--config", help="the config the run used (YAML), quoted in the report")
    rp.add_argument(
        "--advantages",
        nargs=2,
        metavar=("TABLE", "FIGURE"),
        help="the advantage experiment's comparison table (tokenshift advantages table) and its figure",
    )
    rp.add_argument(
        "--training-shifts",
        nargs=3,
        action="append",
        default=[],
        metavar=("PAIR", "TABLE", "FIGURE"),
        help="a toy pair's training-shifts table and its figure; once per toy RL pair",
    )
    rp.add_argument("--explorer", help="the token explorer page (tokenshift explorer), linked from the report")
    output(rp, "--html", "an .html file path", "report.html to write")
    output(rp, "--json", "a .json file path", "summary.json to write")
    rp.set_defaults(func=_report)


def _figures(args: argparse.Namespace) -> None:
    from tokenshift.plots.draw import PAIR_TABLES, draw_pair_figures

    if args.example_run and not args.tokenizer:
        raise InputError("--example-run needs --tokenizer to decode the example response")
    given = {name: getattr(args, name) for name in PAIR_TABLES}
    drawn = draw_pair_figures(
        {name: Path(path) for name, path in given.items() if path},
        Path(args.out_dir),
        example_run=args.example_run,
        example_baseline=args.example_baseline,
        tokenizer=args.tokenizer,
        example_out=args.example_table,
    )
    print(f"wrote {len(drawn)} figures to {args.out_dir}: {', '.join(drawn)}", file=sys.stderr)


def _overview(args: argparse.Namespace) -> None:
    from tokenshift.plots.draw import draw_overview

    draw_overview([Path(p) for p in args.inputs], Path(args.out), kinds=kinds(args))


def _explorer(args: argparse.Namespace) -> None:
    from tokenshift.explorer import build_explorer
    from tokenshift.settings import ExplorerConfig

    scores = once(
        (((pair, dataset), {"base": Path(base), "rl": Path(rl)}) for pair, dataset, base, rl in args.scores),
        lambda key: f"--scores {key[0]} {key[1]}",
        "pair and dataset",
    )
    build_explorer(
        scores,
        Path(args.out),
        runs=[Path(p) for p in args.runs],
        problems=[Path(p) for p in args.problems],
        tokenizers=_named_files(args.tokenizer, "--tokenizer", "PAIR=CHECKPOINT"),
        cfg=settings(ExplorerConfig, args),
    )


def _report(args: argparse.Namespace) -> None:
    from tokenshift.report import advantage_sentences, build_report, sentences

    shifts = once(
        ((pair, (Path(table), Path(figure))) for pair, table, figure in args.training_shifts),
        lambda pair: f"--training-shifts {pair}",
        "toy pair",
    )
    summary = build_report(
        [_named_files(files, "--result") for files in args.result],
        html_out=Path(args.html),
        json_out=Path(args.json),
        kinds=kinds(args),
        overview=[Path(p) for p in args.overview],
        config=args.config,
        advantages=tuple(map(Path, args.advantages)) if args.advantages else None,
        training_shifts=shifts,
        explorer=Path(args.explorer) if args.explorer else None,
    )
    for s in summary["results"]:
        print(f"{s['pair']} on {s['dataset']}:", *sentences(s), sep="\n  ", file=sys.stderr)
    if "advantages" in summary:
        print("advantages:", *advantage_sentences(summary["advantages"]), sep="\n  ", file=sys.stderr)


def _named_files(values: list[str], flag: str, form: str = "NAME=PATH") -> dict[str, Path]:
    """``NAME=PATH`` words (``form``) as name -> path, each name once."""
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise InputError(f"{flag} {value!r}: expected {form}")
        pairs.append((name, Path(path)))
    return once(pairs, lambda name: f"{flag} {name}=...", form.partition("=")[0])
