"""
What a run leaves for people: progress lines, metrics.jsonl, PNG plots, config.json and a section of report.md.

Every stage reports the same way, so runs read alike:

- **Progress lines** of one shape: `step 120/1000 | loss 0.412 | acc 63.2% | 21.4k tok/s | 2m10s left`. Fields print
  in the order given; accuracies and fractions (keys ending in `acc` or `_frac`, values in 0..1) as percents;
  `tok_s` as a rate; time left extrapolates the speed of the steps done so far.
- **metrics.jsonl**: one JSON object a line, appended and closed at once, so a killed run loses at most the line being
  written (read_metrics skips such a torn last line). A resumed run first drops the lines past its checkpoint's step
  (truncate_after), so no step is logged twice.
- **Plots**: PNG files drawn by matplotlib's Agg renderer on a bare Figure, with no screen and no pyplot state.
- **report.md**: one section per stage between marker comments, `<!-- stage:NAME -->` ... `<!-- /stage:NAME -->`;
  re-running a stage replaces its own section in place and keeps the others.

Every file here except metrics.jsonl is written atomically (checkpoint.atomic_write), so an interrupted run never
leaves half a config.json, report.md or PNG.
"""
import json
import math
import os
import re

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from nano_reasoner.checkpoint import atomic_write

REPORT_TITLE = "# nano-reasoner run report"


def _write_text(path, text):
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def write_json(path, obj):
    """Write `obj` as indented JSON (e.g. config.json), atomically."""
    _write_text(path, json.dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# progress lines

def format_duration(seconds):
    """45 -> '45s', 130 -> '2m10s', 3780 -> '1h03m' (rounded to the second; a negative time counts as 0)."""
    seconds = round(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _format_count(value):
    """21400 -> '21.4k', 3.2e6 -> '3.2M', 950 -> '950'."""
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def _format_number(value):
    """Floats to 3 decimals; very small or very large ones (learning rates, KL) in scientific notation."""
    if not isinstance(value, float):
        return str(value)
    if value != 0 and not 0.01 <= abs(value) < 1e5:
        return f"{value:.2e}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}"


def _format_field(key, value):
    if key == "tok_s":
        return f"{_format_count(value)} tok/s"
    if key.endswith("acc") or key.endswith("_frac"):
        return f"{key} {100 * value:.1f}%"
    return f"{key} {_format_number(value)}"


def progress_line(step, total_steps, elapsed_s, *, start_step=0, **fields):
    """
    'step 120/1000 | loss 0.412 | acc 63.2% | 21.4k tok/s | 2m10s left'.

    elapsed_s: seconds spent on the steps from start_step to step (a resumed run passes the step it resumed from,
    so the time left extrapolates only the steps this process has timed).
    """
    parts = [f"step {step}/{total_steps}"] + [_format_field(key, value) for key, value in fields.items()]
    steps_timed = step - start_step
    if steps_timed > 0:
        # time left = seconds per step so far * steps still to go
        parts.append(f"{format_duration(elapsed_s / steps_timed * (total_steps - step))} left")
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------------------------------------
# metrics.jsonl

def read_metrics(path):
    """metrics.jsonl -> list of dicts, one per line. A last line without its newline was cut short by a kill: skipped."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for line_number, line in enumerate(lines[:-1], start=1):  # lines[-1] is "" or the torn line
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path} line {line_number} is not JSON: {line[:80]!r}") from None
    return records


class MetricsLogger:
    """Appends one JSON object a line to run_dir/metrics.jsonl."""

    def __init__(self, run_dir):
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, "metrics.jsonl")

    def log(self, **fields):
        # default=float: numpy numbers and 0-d tensors become plain floats
        line = json.dumps(fields, default=float) + "\n"
        # open, append, close: the line is flushed to the file before training goes on
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def read(self):
        """Every record logged so far ([] before the first)."""
        return read_metrics(self.path) if os.path.exists(self.path) else []

    def truncate_after(self, step):
        """Drop the records with "step" > step: a run resumed from `step` will log those steps again."""
        kept = [record for record in self.read() if "step" not in record or record["step"] <= step]
        _write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))


# ----------------------------------------------------------------------------------------------------------------------
# plots

def _draw_panel(axes, panel):
    """One subplot: panel = {"title", "xlabel", "ylabel", "series": {name: (xs, ys)}, optional "logx", "logy"}."""
    for name, (xs, ys) in panel["series"].items():
        if len(xs) != len(ys):
            raise ValueError(f"series {name!r} has {len(xs)} x values but {len(ys)} y values")
        # markers on short series (evaluations every few hundred steps), plain lines on long ones (the loss)
        axes.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=name)
    axes.set_title(panel["title"])
    axes.set_xlabel(panel["xlabel"])
    axes.set_ylabel(panel["ylabel"])
    if panel.get("logx"):
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())  # on a narrow range matplotlib labels minor ticks, overlapping
    if panel.get("logy"):
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    if panel["series"]:
        axes.legend(fontsize=8)


def _save_figure(figure, path_png):
    figure.tight_layout()
    atomic_write(path_png, lambda file: figure.savefig(file, format="png", dpi=110))


def plot_curves(path_png, series, *, title, xlabel, ylabel, logx=False, logy=False):
    """One plot, one line per series: series = {name: (xs, ys)}."""
    figure = Figure(figsize=(6.0, 4.2))
    _draw_panel(figure.subplots(), {"title": title, "xlabel": xlabel, "ylabel": ylabel, "series": series,
                                    "logx": logx, "logy": logy})
    _save_figure(figure, path_png)


def plot_panels(path_png, panels, title):
    """Several plots in one figure, up to three a row; each panel as in _draw_panel."""
    if not panels:
        raise ValueError("plot_panels needs at least one panel")
    n_cols = min(3, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    figure = Figure(figsize=(5.5 * n_cols, 4.2 * n_rows))
    grid = figure.subplots(n_rows, n_cols, squeeze=False)  # (n_rows, n_cols) array of axes
    for axes, panel in zip(grid.flat, panels):
        _draw_panel(axes, panel)
    for axes in grid.flat[len(panels):]:
        axes.set_visible(False)
    figure.suptitle(title)
    _save_figure(figure, path_png)


# ----------------------------------------------------------------------------------------------------------------------
# report.md

def markdown_table(headers, rows):
    """A GitHub-flavoured markdown table; cells are str()-ed, with '|' escaped and newlines made spaces."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} headers: {row}")

    def table_line(cells):
        return "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"
    return "\n".join([table_line(headers), table_line(["---"] * len(headers))] + [table_line(row) for row in rows])


def write_report_section(report_path, stage, markdown):
    """
    Put `markdown` into report.md as the section of `stage`, between <!-- stage:NAME --> and <!-- /stage:NAME -->:
    an existing section of that stage is replaced in place, a new stage is appended, other sections stay as they are.
    """
    if not re.fullmatch(r"[\w.-]+", stage):
        raise ValueError(f"stage name {stage!r}: use letters, digits, '_', '.' or '-'")
    begin, end = f"<!-- stage:{stage} -->", f"<!-- /stage:{stage} -->"
    section = f"{begin}\n{markdown.strip(chr(10))}\n{end}"
    if os.path.exists(report_path):
        with open(report_path, encoding="utf-8") as f:
            report = f.read()
    else:
        report = REPORT_TITLE + "\n"
    section_start = report.find(begin)
    if section_start == -1:
        report = report.rstrip("\n") + "\n\n" + section + "\n"
    else:
        section_end = report.find(end, section_start)
        if section_end == -1:
            raise ValueError(f"{report_path} has {begin} but no {end}: repair the file or delete it")
        report = report[:section_start] + section + report[section_end + len(end):]
    _write_text(report_path, report)
