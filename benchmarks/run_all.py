"""Runs every benchmark in ``benchmarks/`` one after another, then rewrites the results tables in
``benchmarks/README.md`` from the JSON files in ``benchmarks/results/``.

Every ``benchmarks/bench_*.py`` is picked up (a new one needs no change here) and run with its
defaults, followed by the extra invocations listed in ``EXTRA_RUNS``. A benchmark that exits
non-zero (e.g. because it missed its aim) does not stop the others; its exit code is recorded.

Results are read from ``benchmarks/results/<name>.json``. The common shape (see the README) is a
``summary`` list of ``{metric, figure, aim, met}`` rows plus ``command`` and ``machine``; the
benchmarks written before that shape (polling, download, Slack ack) are read as they are.

Run: ``python benchmarks/run_all.py`` (everything, ~25 min on 2 cores)
     ``python benchmarks/run_all.py --only bench_reservations`` (one benchmark, then the tables)
     ``python benchmarks/run_all.py --tables-only`` (rewrite the README from the JSON files)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
README = HERE / "README.md"
RUN_LOG = RESULTS / "run_all.json"

#: Invocations run after a benchmark's default one: (script stem, arguments).
EXTRA_RUNS: list[tuple[str, list[str]]] = [
    # 1,000 jobs in flight, the bot with and without render sweeps measured side by side.
    ("bench_jobs_in_flight", ["--n", "1000", "--what-if", "no-sweep"]),
]

Row = dict[str, Any]


# --- running ----------------------------------------------------------------------------------------


def discover() -> list[Path]:
    return sorted(HERE.glob("bench_*.py"))


def run_one(script: Path, args: list[str]) -> dict[str, Any]:
    command = ["python", f"benchmarks/{script.name}", *args]
    print(f"\n=== {' '.join(command)}", flush=True)
    started = time.perf_counter()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    code = subprocess.call([sys.executable, str(script), *args], cwd=ROOT, env=env)
    seconds = round(time.perf_counter() - started, 1)
    print(f"=== exit {code} after {seconds} s", flush=True)
    return {"command": " ".join(command), "returncode": code, "seconds": seconds}


# --- reading results ---------------------------------------------------------------------------------


def _yes(value: Any) -> bool | None:
    return None if value is None else bool(value)


def rows_polling(data: dict[str, Any]) -> list[Row]:
    by = {(r["strategy"], r["mode"]): r for r in data["rows"]}
    adaptive, fixed1, fixed10 = by[("adaptive", "model")], by[("fixed 1 s", "model")], by[("fixed 10 s", "model")]
    e2e = by.get(("adaptive", "e2e"))
    target = data.get("target", {})
    rows = [
        {
            "metric": f"status calls per job, adaptive polling ({adaptive['renders']} renders of 30-180 s)",
            "figure": f"{adaptive['calls_mean']} vs {fixed1['calls_mean']} at fixed 1 s "
            f"({target.get('calls_vs_fixed_1s', 0):.0%}) and {fixed10['calls_mean']} at fixed 10 s",
            "aim": "<= 33% of fixed 1 s",
            "met": _yes(target.get("calls_at_most_a_third_of_fixed_1s")),
        },
        {
            "metric": "delay from render done to the bot seeing it, adaptive (median / p90)",
            "figure": f"{adaptive['delay_median_s']} s / {adaptive['delay_p90_s']} s "
            f"(fixed 10 s: {fixed10['delay_median_s']} s / {fixed10['delay_p90_s']} s)",
            "aim": "median < 2 s",
            "met": _yes(target.get("median_delay_under_2s")),
        },
    ]
    if e2e is not None:
        rows.append(
            {
                "metric": f"the same through the real client and fake server ({e2e['renders']} renders)",
                "figure": f"{e2e['calls_mean']} calls/job, delay median {e2e['delay_median_s']} s",
                "aim": None,
                "met": None,
            }
        )
    return rows


def rows_download(data: dict[str, Any]) -> list[Row]:
    rows = []
    for row in data["rows"]:
        rows.append(
            {
                "metric": f"RSS growth during a {data['mb']} MB clip download ({row['mode']})",
                "figure": f"{row['peak_growth_mb']} MB at {row['mb_per_s']} MB/s",
                "aim": f"< {data['target_mb']:.0f} MB",
                "met": _yes(row.get("under_target")),
            }
        )
    return rows


def rows_slack_ack(data: dict[str, Any]) -> list[Row]:
    target = data.get("target_p99_ms", 100.0)
    rows = []
    for r in data.get("results", []):
        headline = r.get("slack") == "separate process"
        rows.append(
            {
                "metric": f"Slack ack, {r['n']} concurrent signed /video, {r['mode']} mode, fake Slack in "
                f"{r.get('slack', '?')} (p50 / p99, median round of {r.get('rounds', 1)})",
                "figure": f"{r['ack_p50_ms']} ms / {r['ack_p99_ms']} ms ({r['acked']}/{r['n']} acked)",
                "aim": f"p99 < {target:.0f} ms" if headline else "(upper bound, fake in the bot's loop)",
                "met": (r["acked"] == r["n"] and r["ack_p99_ms"] < target) if headline else None,
            }
        )
    return rows


#: Readers for results files that predate the common shape, by results file stem.
LEGACY: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "bench_polling": rows_polling,
    "bench_download": rows_download,
    "bench_slack_ack": rows_slack_ack,
}


def command_for(stem: str, data: dict[str, Any]) -> str:
    if data.get("command"):
        return str(data["command"]).strip()
    script = HERE / f"{stem}.py"
    return f"python benchmarks/{script.name}" if script.exists() else "(no command recorded)"


def collect() -> list[tuple[str, list[Row], str]]:
    """(results stem, rows, command) for every results file."""
    out = []
    for path in sorted(RESULTS.glob("*.json")):
        if path == RUN_LOG:
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        stem = path.stem
        if isinstance(data.get("summary"), list):
            rows = [dict(r) for r in data["summary"]]
        elif stem in LEGACY:
            try:
                rows = LEGACY[stem](data)
            except (KeyError, TypeError, ValueError) as exc:
                rows = [{"metric": f"{stem}: unreadable results ({exc})", "figure": "", "aim": None, "met": None}]
        else:
            rows = [{"metric": f"{stem} (no summary in its JSON)", "figure": "see the JSON", "aim": None, "met": None}]
        out.append((stem, rows, command_for(stem, data)))
    return out


# --- writing the README ---------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _met(value: Any) -> str:
    return "—" if value is None else ("yes" if value else "**no**")


def results_table(collected: list[tuple[str, list[Row], str]]) -> str:
    lines = ["| benchmark | metric | figure | aim | met? | command |", "|---|---|---|---|---|---|"]
    for stem, rows, command in collected:
        for row in rows:
            lines.append(
                f"| {stem.removeprefix('bench_')} | {_cell(row.get('metric', ''))} | {_cell(row.get('figure', ''))} "
                f"| {_cell(row.get('aim') or '—')} | {_met(row.get('met'))} | `{_cell(command)}` |"
            )
    return "\n".join(lines)


def machine_line() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.1f} GB RAM"
                break
    except OSError:
        pass
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Measured {when} on: nproc = {os.cpu_count()}{f' ({cpu})' if cpu else ''}{memory}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}. "
        "The machine is shared and noisy: figures are medians of several runs, and comparisons are "
        "measured side by side in one run."
    )


def growth_section() -> str:
    parts = []
    inflight = RESULTS / "bench_jobs_in_flight.json"
    if inflight.exists():
        data = json.loads(inflight.read_text())
        parts += [
            f"Jobs in flight in one bot process, waiting on renders (`{command_for('bench_jobs_in_flight', data)}`; "
            f"medians of {data['rows'][0]['runs'] if data['rows'] else '?'} runs, CPU over {data.get('window_s')} s "
            f"after {data.get('settle_s')} s of settling):",
            "",
            "| jobs in flight | peak RSS (VmHWM) | growth over a warm idle bot | CPU while waiting (% of one core) "
            "| status requests per job per minute (retrieves + list pages of 100) | time until all are rendering |",
            "|---|---|---|---|---|---|",
        ]
        for row in data["rows"]:
            low, high = row["cpu_pct_range"]
            parts.append(
                f"| {row['n']} | {row['peak_rss_mb']} MB | {row['rss_growth_mb']} MB "
                f"| {row['cpu_pct_of_core']}% (runs {low}-{high}) | {row['calls_per_job_per_min']} "
                f"| {row['ramp_s']} s |"
            )
        parts.append("")
    what_if = RESULTS / "bench_jobs_in_flight_what_if.json"
    if what_if.exists():
        data = json.loads(what_if.read_text())
        parts += [
            "The same bot with sweeps (as-is) and without them (no-sweep, every render polled one by one), "
            f"interleaved in one run (`{command_for('bench_jobs_in_flight_what_if', data)}`):",
            "",
            "| jobs in flight | bot | peak RSS | CPU while waiting "
            "| status requests per job per minute (retrieves + list pages of 100) | ramp |",
            "|---|---|---|---|---|---|",
        ]
        for row in data["rows"]:
            low, high = row["cpu_pct_range"]
            parts.append(
                f"| {row['n']} | {row['variant']} | {row['peak_rss_mb']} MB | {row['cpu_pct_of_core']}% "
                f"(runs {low}-{high}) | {row['calls_per_job_per_min']} | {row['ramp_s']} s |"
            )
        parts.append("")
    reservations = RESULTS / "bench_reservations.json"
    if reservations.exists():
        data = json.loads(reservations.read_text())
        parts += [
            f"Reservations per second against concurrency (`{command_for('bench_reservations', data)}`; "
            f"medians of {data['rows'][0]['runs'] if data['rows'] else '?'} runs):",
            "",
            "| case | reservations/s (median) | slowest / fastest run | ms per reservation |",
            "|---|---|---|---|",
        ]
        for row in data["rows"]:
            parts.append(
                f"| {row['case']} | {row['per_s_median']:,.0f} | {row['per_s_min']:,.0f} / {row['per_s_max']:,.0f} "
                f"| {row['ms_per_admit_median']} |"
            )
        parts.append("")
    return "\n".join(parts).rstrip() or "(no results yet: run `python benchmarks/run_all.py`)"


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    block = f"{start}\n{body}\n{end}"
    if pattern.search(text):
        return pattern.sub(lambda _m: block, text)
    return text.rstrip() + f"\n\n{block}\n"


def write_readme() -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    text = replace_block(text, "machine", machine_line())
    text = replace_block(text, "results", results_table(collect()))
    text = replace_block(text, "growth", growth_section())
    README.write_text(text)
    print(f"rewrote {README.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (script stems)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="do not run these")
    parser.add_argument("--no-extra", action="store_true", help="skip the EXTRA_RUNS invocations")
    parser.add_argument("--tables-only", action="store_true", help="only rewrite the README from the JSON files")
    args = parser.parse_args()

    if not args.tables_only:
        log: dict[str, Any] = json.loads(RUN_LOG.read_text()) if RUN_LOG.exists() else {}
        for script in discover():
            stem = script.stem
            if (args.only and stem not in args.only) or stem in args.skip:
                continue
            runs = [run_one(script, [])]
            if not args.no_extra:
                runs += [run_one(script, extra) for name, extra in EXTRA_RUNS if name == stem]
            log[stem] = runs
        RESULTS.mkdir(parents=True, exist_ok=True)
        RUN_LOG.write_text(json.dumps(log, indent=2) + "\n")
        failed = [(r["command"], r["returncode"]) for runs in log.values() for r in runs if r["returncode"]]
        for command, code in failed:
            print(f"note: {command} exited {code} (see its output above)")
    write_readme()


if __name__ == "__main__":
    main()
