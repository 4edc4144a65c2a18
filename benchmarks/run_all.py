"""Run every flowtrail benchmark, then rewrite the results table in benchmarks/README.md.

    .venv/bin/python benchmarks/run_all.py [--only core,store] [--table-only]

Each benchmark runs in its own process and writes benchmarks/results/NAME.json; the
table is made from those files (the side-by-side comparisons' rows too, from the last
`make bench-compare`), between the README's ``<!-- results -->`` markers. A missed
target is a row that says so: this exits non-zero only when a benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS = HERE / "results"
README = HERE / "README.md"
START, END = "<!-- results -->", "<!-- /results -->"

#: In the order they run; the scale curves build large logs once (minutes, the first time).
BENCHMARKS = ["core", "store", "orchestrator", "engine", "postgres", "scale", "import"]

Results = dict[str, Any]


def get(results: Results, name: str, path: str) -> Any:
    value: Any = results.get(name, {}).get("figures")
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


@dataclass(frozen=True)
class Row:
    figure: str
    target: str
    benchmark: str
    #: The result in words, or None when the benchmark has not run.
    result: Callable[[Results], str | None]
    #: The anchor measured in the same run, with the ratio, if there is one.
    anchor: Callable[[Results], str | None] = lambda _: None
    #: True (met), False (missed), None (no target or not measured).
    met: Callable[[Results], bool | None] = lambda _: None


def num(value: Any, unit: str = "", digits: int = 0) -> str | None:
    if value is None:
        return None
    return f"{value:,.{digits}f}{unit}"


def median(results: Results, name: str, path: str) -> float | None:
    value = get(results, name, path)
    return value.get("median") if isinstance(value, dict) else value


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def _scale(results: Results, size: str, path: str) -> float | None:
    return median(results, "scale", f"{size}.{path}")


ROWS = [
    Row(
        "decide + evolve + encode, slowest case (a retry)",
        "<= 10 us",
        "core",
        lambda r: num(get(r, "core", "decide_evolve_encode_us_worst"), " us", 1),
        met=lambda r: at_most(get(r, "core", "decide_evolve_encode_us_worst"), 10),
    ),
    Row(
        "sync single-event append, durable",
        "<= 1.3x raw",
        "store",
        lambda r: num(median(r, "store", "single_append.append_us"), " us"),
        lambda r: (
            f"raw INSERT + COMMIT {num(median(r, 'store', 'single_append.raw_insert_commit_us'), ' us')}: "
            f"**{get(r, 'store', 'single_append.ratio')}x**"
        ),
        lambda r: at_most(get(r, "store", "single_append.ratio"), 1.3),
    ),
    Row(
        "async appends, 64 tasks, group commit, durable",
        ">= 60,000 events/s",
        "store",
        lambda r: num(median(r, "store", "async_group_commit.events_per_s"), " events/s"),
        lambda r: (
            "raw aiosqlite, 100 per transaction "
            f"{num(median(r, 'store', 'async_group_commit.raw_aiosqlite_100_per_tx_events_per_s'), '/s')}; "
            "each task's run ids together "
            f"{num(median(r, 'store', 'async_group_commit.ids_clustered_per_task_events_per_s'), '/s')}"
        ),
        lambda r: at_least(median(r, "store", "async_group_commit.events_per_s"), 60_000),
    ),
    Row(
        "read_stream among 1M events",
        "<= 2x raw",
        "store",
        lambda r: num(median(r, "store", "reads.read_stream_us"), " us", 1),
        lambda r: (
            f"raw SELECT {num(median(r, 'store', 'reads.raw_select_us'), ' us', 1)}: "
            f"**{get(r, 'store', 'reads.read_stream_ratio')}x**"
        ),
        lambda r: at_most(get(r, "store", "reads.read_stream_ratio"), 2),
    ),
    Row(
        "read_all scan + decode, 1M events",
        ">= 60% of raw",
        "store",
        lambda r: num(median(r, "store", "reads.read_all_decode_events_per_s"), " events/s"),
        lambda r: (
            f"raw scan + msgspec {num(median(r, 'store', 'reads.raw_scan_decode_events_per_s'), '/s')}: "
            f"**{num((get(r, 'store', 'reads.read_all_share_of_raw') or 0) * 100)}%**"
        ),
        lambda r: at_least(get(r, "store", "reads.read_all_share_of_raw"), 0.6),
    ),
    Row(
        "sync propose_state, durable",
        "<= 2x raw",
        "orchestrator",
        lambda r: num(median(r, "orchestrator", "sync_propose.propose_us"), " us"),
        lambda r: (
            f"raw INSERT + COMMIT {num(median(r, 'orchestrator', 'sync_propose.raw_insert_commit_us'), ' us')}: "
            f"**{get(r, 'orchestrator', 'sync_propose.ratio')}x**"
        ),
        lambda r: at_most(get(r, "orchestrator", "sync_propose.ratio"), 2),
    ),
    Row(
        "async propose_state, 64 concurrent runs",
        ">= 20,000/s",
        "orchestrator",
        lambda r: num(median(r, "orchestrator", "async_propose.proposals_per_s"), " proposals/s"),
        met=lambda r: at_least(median(r, "orchestrator", "async_propose.proposals_per_s"), 20_000),
    ),
    Row(
        "read_flow_run among 1M flow runs",
        "<= 20 us",
        "orchestrator",
        lambda r: num(median(r, "orchestrator", "lookups.read_flow_run_us"), " us", 1),
        met=lambda r: at_most(median(r, "orchestrator", "lookups.read_flow_run_us"), 20),
    ),
    Row(
        "find_subflow_run among 1M flow runs",
        "<= 20 us",
        "orchestrator",
        lambda r: num(median(r, "orchestrator", "lookups.find_subflow_run_us"), " us", 1),
        met=lambda r: at_most(median(r, "orchestrator", "lookups.find_subflow_run_us"), 20),
    ),
    Row(
        "read_flow_runs, a page of 200 among 1M flow runs: slowest of each sort and the state, state name or flow filter (alone or by start time)",
        "<= 10 ms",
        "orchestrator",
        lambda r: num(get(r, "orchestrator", "lookups.pages.slowest_ms"), " ms", 2),
        anchor=lambda r: (
            None
            if get(r, "orchestrator", "lookups.pages.slowest") is None
            else f"slowest: {get(r, 'orchestrator', 'lookups.pages.slowest')}; under a tag 1 run in 7 holds "
            f"(each run's tag looked up): {num(get(r, 'orchestrator', 'lookups.pages.slowest_tag_ms'), ' ms', 1)} "
            f"({get(r, 'orchestrator', 'lookups.pages.slowest_tag')})"
        ),
        met=lambda r: at_most(get(r, "orchestrator", "lookups.pages.slowest_ms"), 10),
    ),
    Row(
        "rebuild() of 2.2M events",
        ">= 250,000 events/s",
        "orchestrator",
        lambda r: num(get(r, "orchestrator", "rebuild.events_per_s"), " events/s"),
        anchor=lambda r: (
            None
            if get(r, "orchestrator", "rebuild.one_process_events_per_s") is None
            else f"same rebuild in one process (workers=1): "
            f"{num(get(r, 'orchestrator', 'rebuild.one_process_events_per_s'), ' events/s')}; "
            f"split over {get(r, 'orchestrator', 'rebuild.processes')} processes "
            f"{get(r, 'orchestrator', 'rebuild.speedup')}x"
        ),
        met=lambda r: at_least(get(r, "orchestrator", "rebuild.events_per_s"), 250_000),
    ),
    Row(
        "a process proposing every 2 ms through rebuild() of 1M runs: longest wait",
        "",
        "orchestrator",
        lambda r: num(get(r, "orchestrator", "rebuild_beside_a_writer.longest_ms"), " ms", 1),
        anchor=lambda r: (
            None
            if get(r, "orchestrator", "rebuild_beside_a_writer.calls") is None
            else f"p99 {num(get(r, 'orchestrator', 'rebuild_beside_a_writer.p99_ms'), ' ms', 1)}; "
            f"StoreBusyErrors: {get(r, 'orchestrator', 'rebuild_beside_a_writer.busy_errors')} of "
            f"{num(get(r, 'orchestrator', 'rebuild_beside_a_writer.calls'))} calls"
        ),
    ),
    Row(
        "rebuild() peak RSS (all its processes)",
        "<= 150 MB",
        "orchestrator",
        lambda r: num(get(r, "orchestrator", "rebuild.peak_rss_mb"), " MB"),
        met=lambda r: at_most(get(r, "orchestrator", "rebuild.peak_rss_mb"), 150),
    ),
    Row(
        "trivial sync @flow end to end, durable",
        "<= 1 ms",
        "engine",
        lambda r: num(median(r, "engine", "trivial_ms"), " ms", 2),
        met=lambda r: at_most(median(r, "engine", "trivial_ms"), 1),
    ),
    Row(
        "flow with 100 subflows, per subflow",
        "",
        "engine",
        lambda r: num(median(r, "engine", "per_subflow_ms"), " ms", 2),
    ),
    Row(
        "flow failing with retries=2",
        "",
        "engine",
        lambda r: num(median(r, "engine", "failing_retries_ms"), " ms", 2),
    ),
    *[
        Row(
            f"PostgreSQL propose_state, {n} concurrent run{'s' if n > 1 else ''} (async)",
            ">= 5,000/s" if n == 64 else "",
            "postgres",
            lambda r, n=n: (
                None
                if get(r, "postgres", f"postgresql_{n}") is None
                else f"{num(get(r, 'postgres', f'postgresql_{n}.per_second'), '/s')}, "
                f"p50 {num(get(r, 'postgres', f'postgresql_{n}.p50_ms'), ' ms', 2)}, "
                f"p99 {num(get(r, 'postgres', f'postgresql_{n}.p99_ms'), ' ms', 2)}"
            ),
            lambda r, n=n: (
                None
                if get(r, "postgres", f"sqlite_{n}") is None
                else f"SQLite: {num(get(r, 'postgres', f'sqlite_{n}.per_second'), '/s')}, "
                f"p99 {num(get(r, 'postgres', f'sqlite_{n}.p99_ms'), ' ms', 2)}"
            ),
            (lambda r: None)
            if n != 64
            else lambda r: at_least(get(r, "postgres", "postgresql_64.per_second"), 5_000),
        )
        for n in (1, 8, 64)
    ],
    Row(
        "PostgreSQL, 64 concurrent runs offered 5,500 proposals/s (open loop)",
        ">= 5,000/s with p99 <= 5 ms",
        "postgres",
        lambda r: (
            None
            if get(r, "postgres", "postgresql_64_open") is None
            else f"{num(get(r, 'postgres', 'postgresql_64_open.per_second'), '/s')}, "
            f"p50 {num(get(r, 'postgres', 'postgresql_64_open.p50_ms'), ' ms', 2)}, "
            f"p99 {num(get(r, 'postgres', 'postgresql_64_open.p99_ms'), ' ms', 2)} "
            f"(rounds {num(get(r, 'postgres', 'postgresql_64_open.p99_min_ms'), '', 2)}-"
            f"{num(get(r, 'postgres', 'postgresql_64_open.p99_max_ms'), ' ms', 2)})"
        ),
        lambda r: (
            None
            if get(r, "postgres", "sqlite_64_open") is None
            else f"SQLite: p99 {num(get(r, 'postgres', 'sqlite_64_open.p99_ms'), ' ms', 2)}"
        ),
        lambda r: (
            None
            if get(r, "postgres", "postgresql_64_open") is None
            else bool(
                at_least(get(r, "postgres", "postgresql_64_open.per_second"), 5_000)
                and at_most(get(r, "postgres", "postgresql_64_open.p99_ms"), 5)
            )
        ),
    ),
    Row(
        "PostgreSQL, 8 processes x 8 runs on one log",
        "",
        "postgres",
        lambda r: (
            None
            if get(r, "postgres", "postgresql_8x8_processes") is None
            else f"{num(get(r, 'postgres', 'postgresql_8x8_processes.per_second'), '/s')}, "
            f"p99 {num(get(r, 'postgres', 'postgresql_8x8_processes.p99_ms'), ' ms', 2)}"
        ),
        lambda r: (
            None
            if get(r, "postgres", "sqlite_8x8_processes") is None
            else f"SQLite: {num(get(r, 'postgres', 'sqlite_8x8_processes.per_second'), '/s')}, "
            f"p99 {num(get(r, 'postgres', 'sqlite_8x8_processes.p99_ms'), ' ms', 2)}"
        ),
    ),
    *[
        Row(
            f"{label}: append / propose / rebuild at {size_label} events",
            "append, propose at 10M <= 1.5x at 10k" if size == "10000000" else "",
            "scale",
            lambda r, size=size: (
                None
                if get(r, "scale", size) is None
                else f"{num(_scale(r, size, 'append_us'), ' us')} / {num(_scale(r, size, 'propose_us'), ' us')} / "
                f"{num(get(r, 'scale', f'{size}.rebuild.events_per_s'), ' events/s')}, "
                f"{num(get(r, 'scale', f'{size}.rebuild.peak_rss_mb'), ' MB')}"
            ),
            lambda r, size=size: (
                None
                if get(r, "scale", size) is None
                else "async proposals/s at 1/8/64 runs: "
                + "/".join(
                    num(get(r, "scale", f"{size}.proposals_per_s.{n}")) or "-" for n in ("1", "8", "64")
                )
            ),
            (lambda r: None)
            if size != "10000000"
            else lambda r: (
                None
                if get(r, "scale", "append_us_growth") is None
                else bool(
                    at_most(get(r, "scale", "append_us_growth"), 1.5)
                    and at_most(get(r, "scale", "propose_us_growth"), 1.5)
                )
            ),
        )
        for label, size, size_label in (
            ("Scale", "10000", "10k"),
            ("Scale", "1000000", "1M"),
            ("Scale", "10000000", "10M"),
        )
    ],
    Row(
        "import flowtrail, fresh interpreter",
        "<= 150 ms",
        "import",
        lambda r: num(median(r, "import", "import_ms"), " ms"),
        met=lambda r: at_most(median(r, "import", "import_ms"), 150),
    ),
]


def compare_rows(results: Results) -> list[str]:
    """The side-by-side targets of the last `make bench-compare`, as rows."""
    targets = get(results, "compare", "targets") or []
    rows = []
    for target in targets:
        met = "yes" if target["met"] else "**no**"
        rows.append(
            f"| {target['target']} | >= {target['need']:g}x | {target['got']:,.2f}x | measured side by side "
            f"in one run | {met} | `make bench-compare` |"
        )
    return rows


def load_results() -> Results:
    results: Results = {}
    for path in sorted(RESULTS.glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    return results


def cell(text: str | None) -> str:
    return "(not run)" if text is None else text.replace("|", "\\|")


def table(results: Results) -> str:
    machines = sorted({r["machine"] for r in results.values() if isinstance(r, dict) and "machine" in r})
    speeds = sorted(
        r["python_speed_us"] for r in results.values() if isinstance(r, dict) and "python_speed_us" in r
    )
    speed = f" `sum(range(1000))` took {speeds[len(speeds) // 2]:.1f} us here." if speeds else ""
    lines = [
        f"Machine: {'; '.join(machines) or '(no results yet)'}.{speed} Written by `make bench` "
        "from benchmarks/results/*.json.",
        "",
        "| figure | target | result | anchor in the same run | met | command |",
        "|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        met = row.met(results)
        mark = {True: "yes", False: "**no**", None: ""}[met]
        command = f"`.venv/bin/python benchmarks/bench_{row.benchmark}.py`"
        lines.append(
            f"| {row.figure} | {row.target} | {cell(row.result(results))} | {row.anchor(results) or ''} "
            f"| {mark} | {command} |"
        )
    lines += compare_rows(results)
    return "\n".join(lines)


def rewrite_readme(results: Results) -> None:
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{README} has no {START} ... {END} markers to write the table between")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    README.write_text(f"{before}{START}\n{table(results)}\n{END}{after}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from the last results")
    args = parser.parse_args()
    failed = []
    if not args.table_only:
        for name in args.only.split(","):
            print(f"== benchmarks/bench_{name}.py", flush=True)
            done = subprocess.run([sys.executable, str(HERE / f"bench_{name}.py")], cwd=HERE, check=False)
            if done.returncode != 0:
                failed.append(name)
    rewrite_readme(load_results())
    print(f"rewrote the table in {README}")
    if failed:
        raise SystemExit(f"benchmarks that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
