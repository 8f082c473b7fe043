"""What the studies found: per row the mean and 95% interval over seeds, the paired comparison with the default
MMFuser, as `studies.json`, Markdown tables (`studies.md`) and a figure (`studies.png`, one panel per study)."""

import json
from dataclasses import asdict
from pathlib import Path

from ..visualize import save_figure
from .seed_statistics import mean_interval, paired_comparison
from .studies import DEFAULT_RUN, STUDIES
from .study_runs import write_atomically

METRICS = {"all": "all", "fine": "fine-grained", "coarse": "coarse"}
# The paired comparison is reported for these; "fine" is what multi-layer fusion is for.
COMPARED_METRICS = ("fine", "all")
REPORT_FILES = {"summary": "studies.json", "tables": "studies.md", "figure": "studies.png"}


def summarize_study(study: str, results: dict[str, dict[int, dict]]) -> dict:
    """Rows of `study` from its results (run -> seed -> accuracy): intervals per metric, and each row other than the
    default against it, paired by seed."""
    default = results[DEFAULT_RUN]
    seeds = sorted(default)
    rows = []
    for row in STUDIES[study].rows:
        values = {metric: [results[row.run][seed][metric] for seed in seeds] for metric in METRICS}
        entry = {"label": row.label, "run": row.run,
                 **{metric: asdict(mean_interval(values[metric])) for metric in METRICS}}
        if row.run != DEFAULT_RUN:
            entry["against_default"] = {
                metric: asdict(paired_comparison(values[metric], [default[seed][metric] for seed in seeds]))
                for metric in COMPARED_METRICS
            }
        rows.append(entry)
    return {"title": STUDIES[study].title, "seeds": seeds, "rows": rows}


def percent_interval(interval: dict, signed: bool = False) -> str:
    """`74.7 [68.1, 81.3]` in %, or the mean alone when there is no interval."""
    number = "{:+.1f}" if signed else "{:.1f}"
    text = number.format(100 * interval["mean"])
    if interval["low"] is not None:
        text += f" [{number.format(100 * interval['low'])}, {number.format(100 * interval['high'])}]"
    return text


def seed_count(seeds: list[int]) -> str:
    return f"{len(seeds)} seed" + ("s" if len(seeds) > 1 else "")


def p_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_study_table(summary: dict) -> str:
    """A Markdown table of one study: accuracy (%) mean [95% interval], and fine-grained accuracy against MMFuser."""
    seeds = summary["seeds"]
    header = (f"| {summary['title']} ({seed_count(seeds)}) | " + " | ".join(METRICS.values())
              + " | fine-grained − MMFuser, paired | p (paired t) | p (sign flip) |")
    lines = [header, "|" + "---|" * (len(METRICS) + 4)]
    for row in summary["rows"]:
        cells = [percent_interval(row[metric]) for metric in METRICS]
        compared = row.get("against_default", {}).get("fine")
        if compared is None:
            cells += ["(reference)", "", ""]
        else:
            cells += [percent_interval(compared["difference"], signed=True), p_value(compared["t_test_p"]),
                      p_value(compared["sign_flip_p"])]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_studies(summaries: dict[str, dict]):
    """A matplotlib Figure (Agg canvas): per study a panel of bars, fine-grained and overall accuracy per row, with
    their 95% intervals."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(summaries), 5.2), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (study, summary) in enumerate(summaries.items()):
        axes = figure.add_subplot(1, len(summaries), index + 1)
        positions = range(len(summary["rows"]))
        for offset, metric, colour in ((-0.2, "fine", "tab:blue"), (0.2, "all", "tab:gray")):
            intervals = [row[metric] for row in summary["rows"]]
            means = [100 * interval["mean"] for interval in intervals]
            errors = [[100 * (i["mean"] - i["low"]) if i["low"] is not None else 0 for i in intervals],
                      [100 * (i["high"] - i["mean"]) if i["high"] is not None else 0 for i in intervals]]
            axes.bar([position + offset for position in positions], means, 0.4, yerr=errors, capsize=3,
                     color=colour, label=METRICS[metric])
        axes.set_xticks(list(positions), [row["label"] for row in summary["rows"]], rotation=30, ha="right",
                        fontsize=8)
        axes.set_ylim(0, 115)  # room above the bars for the legend
        axes.set_yticks(range(0, 101, 20))
        axes.set_ylabel("test accuracy (%)")
        axes.set_title(f"{study}: {summary['title']} ({seed_count(summary['seeds'])})", fontsize=9)
        axes.grid(axis="y", alpha=0.3)
        axes.legend(loc="upper center", ncols=2, fontsize=8)
    figure.suptitle("The toy studies: test accuracy, mean and 95% interval over seeds")
    return figure


def write_report(output_dir: str | Path, results: dict[str, dict[str, dict[int, dict]]]) -> str:
    """Summaries, tables and figure of `results` (study -> run -> seed -> accuracy, see `study_runs.run_studies`)
    into `output_dir`; returns the tables."""
    output_dir = Path(output_dir)
    summaries = {study: summarize_study(study, study_results) for study, study_results in results.items()}
    tables = "\n\n".join(format_study_table(summary) for summary in summaries.values())
    write_atomically(output_dir / REPORT_FILES["summary"], json.dumps(summaries, indent=1) + "\n")
    write_atomically(output_dir / REPORT_FILES["tables"], tables + "\n")
    save_figure(plot_studies(summaries), output_dir / REPORT_FILES["figure"])
    return tables


__all__ = ["REPORT_FILES", "format_study_table", "plot_studies", "summarize_study", "write_report"]
