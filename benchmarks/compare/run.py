"""flowtrail side by side with Prefect 3.9.1 and eventsourcing 9.5.6, measured in one run.

    .venv/bin/python benchmarks/compare/setup_envs.py   # once: the anchors' own venvs
    .venv/bin/python benchmarks/compare/run.py [--rounds 5] [--quick]

Each side runs in its own process and its own virtual environment (the anchors are
never installed into flowtrail's). Rounds alternate the sides, their order rotating
from round to round so that a drift of the machine falls on every side alike; every
figure is the median of its per-round values, with the min-max beside it, and each
ratio is taken between medians of the same run.

1. Flows: flowtrail (durable, its own SQLite log) against Prefect 3.9.1 on a local
   temporary server (its own PREFECT_HOME and SQLite database in a temporary folder,
   analytics and UI off), once with Prefect's defaults and once with flow-run heartbeats
   off: (a) a trivial sync flow, per run; (b) a flow calling a trivial task 100 times,
   per task run; (c) a flow with one subflow, per parent run; (d) a flow failing with
   retries=2 and no delay, per run. The states each records are counted and the time
   per recorded state is compared as well.
2. Store: flowtrail's log against eventsourcing on SQLite: single- and 5-event
   appends, reading back and replaying 100,000 events; the raw sqlite3 floor beside.

Targets are reported, never enforced: the exit status is non-zero only on an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHMARKS = HERE.parent
VENVS = BENCHMARKS / ".venvs"
PREFECT_PYTHON = VENVS / "prefect" / "bin" / "python"
ES_PYTHON = VENVS / "eventsourcing" / "bin" / "python"

SCENARIOS = {
    "trivial": "(a) trivial sync flow, per run",
    "hundred_tasks": "(b) flow calling a trivial task 100x, per task run",
    "subflow": "(c) flow with one subflow, per parent run",
    "failing_retries": "(d) flow failing with retries=2, per run",
}
# Calls per scenario and round. Prefect's runs take tens of milliseconds with heartbeats
# off and about a second per attempt with its defaults, hence the smaller counts there.
CALLS = {
    "flowtrail": {"trivial": 200, "hundred_tasks": 3, "subflow": 100, "failing_retries": 100},
    "prefect-off": {"trivial": 40, "hundred_tasks": 2, "subflow": 20, "failing_retries": 20},
    "prefect-default": {"trivial": 10, "hundred_tasks": 2, "subflow": 5, "failing_retries": 5},
}
QUICK_CALLS = {
    "flowtrail": {"trivial": 50, "hundred_tasks": 1, "subflow": 20, "failing_retries": 20},
    "prefect-off": {"trivial": 5, "hundred_tasks": 1, "subflow": 3, "failing_retries": 3},
    "prefect-default": {"trivial": 2, "hundred_tasks": 1, "subflow": 1, "failing_retries": 1},
}
SIDE_NAMES = {
    "flowtrail": "flowtrail, durable",
    "prefect-off": "Prefect 3.9.1, heartbeats off",
    "prefect-default": "Prefect 3.9.1, defaults",
}


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def rotated(sides: list[str], round_index: int) -> list[str]:
    shift = round_index % len(sides)
    return sides[shift:] + sides[:shift]


def run_side(
    python: Path,
    script: str,
    arguments: list[str],
    *,
    work: Path,
    label: str,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one side's script for one round; its figures come back through a file."""
    out = work / f"{label}.json"
    log = work / f"{label}.log"
    command = [str(python), str(HERE / script), *arguments, "--out", str(out)]
    with log.open("w") as errors:
        done = subprocess.run(
            command, stdout=errors, stderr=subprocess.STDOUT, env=env, cwd=work, check=False
        )
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-30:]
        raise RuntimeError(f"{label} exited {done.returncode}:\n" + "\n".join(tail))
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# --- the Prefect server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def prefect_environment(work: Path, port: int) -> dict[str, str]:
    """The environment of the server and of every Prefect client process: nothing from the
    caller's Prefect configuration, a temporary home and database, nothing sent outside."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    home = work / "prefect-home"
    home.mkdir(exist_ok=True)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{work / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_UI_ENABLED": "false",
        }
    )
    return env


def session_cpu_seconds(session: int) -> float:
    """CPU time used so far by every process of a session (the server and any child)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # field 6 of stat, counted after the command name
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(session: int, timeout: float = 60.0) -> float:
    """Wait until the server has used under 5% of a core for a whole second.

    After a Prefect round the server keeps working for a while (persisting events,
    recording task-run states, writing logs); a side measured meanwhile would share the
    two cores and the disk with it. Every side, Prefect's included, starts on a quiet
    machine. Returns the seconds waited."""
    start = time.monotonic()
    before = session_cpu_seconds(session)
    while time.monotonic() - start < timeout:
        time.sleep(1.0)
        now = session_cpu_seconds(session)
        if now - before < 0.05:
            break
        before = now
    return time.monotonic() - start


@contextlib.contextmanager
def prefect_server(work: Path) -> Iterator[tuple[dict[str, str], int]]:
    """``prefect server start`` on a free loopback port; yields the clients' environment
    and the server's session id."""
    port = free_port()
    env = prefect_environment(work, port)
    log = (work / "prefect-server.log").open("w")
    server = subprocess.Popen(
        [
            str(VENVS / "prefect" / "bin" / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=work,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the Prefect server exited {server.returncode}: see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Prefect server did not answer /api/health within 180 s")
            time.sleep(0.5)
        yield env, server.pid
    finally:
        # The server was started in a session of its own: end that group, and only it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


# --- 1. flows -------------------------------------------------------------------------------------


def flow_rounds(
    work: Path, rounds: int, calls: dict[str, dict[str, int]]
) -> tuple[dict[str, list[dict[str, Any]]], list[float]]:
    """The measured rounds, after one warm-up round per side that is thrown away: the
    first runs on a new database (flowtrail's log, Prefect's) pay for growing its files
    and filling caches, which neither side pays again."""
    per_side: dict[str, list[dict[str, Any]]] = {side: [] for side in calls}
    waits: list[float] = []
    ft_db = work / "flowtrail-flows.db"
    with prefect_server(work) as (env, session):

        def one(side: str, counts: dict[str, int], label: str) -> dict[str, Any]:
            waits.append(wait_until_quiet(session))
            if side == "flowtrail":
                arguments = ["--db", str(ft_db), "--counts", json.dumps(counts)]
                return run_side(Path(sys.executable), "ft_flows.py", arguments, work=work, label=label)
            arguments = ["--heartbeats", side.removeprefix("prefect-"), "--counts", json.dumps(counts)]
            return run_side(PREFECT_PYTHON, "prefect_flows.py", arguments, work=work, label=label, env=env)

        for side in calls:
            print(f"  warm-up: {SIDE_NAMES[side]}", flush=True)
            one(side, QUICK_CALLS[side], f"flows-warmup-{side}")
        for index in range(rounds):
            for side in rotated(list(calls), index):
                print(f"  round {index + 1}/{rounds}: {SIDE_NAMES[side]}", flush=True)
                per_side[side].append(one(side, calls[side], f"flows-{index}-{side}"))
    return per_side, waits


def aggregate_flows(per_side: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for scenario in SCENARIOS:
        row: dict[str, Any] = {}
        for side, results in per_side.items():
            runs = [result["scenarios"][scenario] for result in results]
            states = sorted({run["states_per_call"] for run in runs})
            row[side] = {
                "per_unit_ms": summary([run["per_unit_ms"] for run in runs]),
                "per_state_ms": summary([run["per_call_ms"] / run["states_per_call"] for run in runs]),
                "states_per_call": states[0] if len(states) == 1 else states,
                "units_per_call": runs[0]["units_per_call"],
                "final_states": sorted({run["final_state"] for run in runs}),
                "states_settled": all(run.get("states_settled", True) for run in runs),
            }
        ours = row["flowtrail"]
        for side in per_side:
            if side != "flowtrail":
                row[side]["ratio_per_unit"] = (
                    row[side]["per_unit_ms"]["median"] / ours["per_unit_ms"]["median"]
                )
                row[side]["ratio_per_state"] = (
                    row[side]["per_state_ms"]["median"] / ours["per_state_ms"]["median"]
                )
        figures[scenario] = row
    return figures


# --- 2. store -------------------------------------------------------------------------------------


def store_rounds(work: Path, rounds: int, quick: bool) -> dict[str, Any]:
    sizes = ["--singles", "100", "--fives", "50"] if quick else ["--singles", "300", "--fives", "150"]
    ft_python = Path(sys.executable)
    print("  preparing the 100,000-event logs (not timed)", flush=True)
    ft_log = run_side(
        ft_python, "ft_store.py", ["prepare", "--work", str(work)], work=work, label="store-prepare-ft"
    )
    es_log = run_side(
        ES_PYTHON, "es_store.py", ["prepare", "--work", str(work)], work=work, label="store-prepare-es"
    )
    sides = {"flowtrail": (ft_python, "ft_store.py"), "eventsourcing": (ES_PYTHON, "es_store.py")}
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for index in range(rounds):
        for side in rotated(list(sides), index):
            print(f"  round {index + 1}/{rounds}: {side}", flush=True)
            python, script = sides[side]
            results[side].append(
                run_side(
                    python,
                    script,
                    ["round", "--work", str(work), *sizes],
                    work=work,
                    label=f"store-{index}-{side}",
                )
            )
    return {"logs": {"flowtrail": ft_log, "eventsourcing": es_log}, "rounds": results}


def aggregate_store(raw: dict[str, Any]) -> dict[str, Any]:
    ft, es = raw["rounds"]["flowtrail"], raw["rounds"]["eventsourcing"]

    def of(results: list[dict[str, Any]], key: str) -> dict[str, float]:
        return summary([result[key] for result in results])

    figures: dict[str, Any] = {
        "flowtrail": {key: of(ft, key) for key in ft[0] if isinstance(ft[0][key], float)},
        "eventsourcing": {key: of(es, key) for key in es[0] if isinstance(es[0][key], float)},
        "eventsourcing_sqlite": {"synchronous": es[0]["synchronous"], "journal_mode": es[0]["journal_mode"]},
        "logs": raw["logs"],
    }
    f, e = figures["flowtrail"], figures["eventsourcing"]
    figures["ratios"] = {
        "single_append_eventsourcing_over_flowtrail": e["single_append_us"]["median"]
        / f["single_append_us"]["median"],
        "single_append_flowtrail_over_raw": f["single_append_us"]["median"]
        / f["raw_single_insert_commit_us"]["median"],
        "single_append_eventsourcing_over_raw": e["single_append_us"]["median"]
        / f["raw_single_insert_commit_us"]["median"],
        "five_append_eventsourcing_over_flowtrail": e["five_append_us"]["median"]
        / f["five_append_us"]["median"],
        "five_append_flowtrail_over_raw": f["five_append_us"]["median"] / f["raw_5_rows_per_tx_us"]["median"],
        "read_decode_flowtrail_over_eventsourcing": f["read_all_decode_events_per_s"]["median"]
        / e["read_decode_events_per_s"]["median"],
        "read_decode_flowtrail_share_of_raw": f["read_all_decode_events_per_s"]["median"]
        / f["raw_scan_decode_events_per_s"]["median"],
        "replay_in_memory_flowtrail_over_eventsourcing": f["replay_in_memory_events_per_s"]["median"]
        / e["replay_events_per_s"]["median"],
        "rebuild_flowtrail_over_eventsourcing_replay": f["rebuild_events_per_s"]["median"]
        / e["replay_events_per_s"]["median"],
    }
    return figures


# --- the report -----------------------------------------------------------------------------------


def spread(figure: dict[str, float], unit: str, scale: float = 1.0, digits: int = 2) -> str:
    median, low, high = (figure[key] * scale for key in ("median", "min", "max"))
    if unit == "/s":
        return f"{median:,.0f}/s ({low:,.0f}-{high:,.0f})"
    return f"{median:,.{digits}f} {unit} ({low:,.{digits}f}-{high:,.{digits}f})"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def targets(flows: dict[str, Any] | None, store: dict[str, Any] | None) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    if flows is not None:
        trivial, failing = flows["trivial"], flows["failing_retries"]
        checks += [
            {
                "target": "trivial flow >= 80x faster than Prefect, heartbeats off",
                "need": 80.0,
                "got": trivial["prefect-off"]["ratio_per_unit"],
            },
            {
                "target": "trivial flow >= 1,000x faster than Prefect, defaults",
                "need": 1000.0,
                "got": trivial["prefect-default"]["ratio_per_unit"],
            },
            {
                "target": "failing flow, retries=2, >= 80x faster than Prefect, heartbeats off",
                "need": 80.0,
                "got": failing["prefect-off"]["ratio_per_unit"],
            },
            {
                "target": "failing flow, retries=2, >= 80x faster than Prefect, defaults",
                "need": 80.0,
                "got": failing["prefect-default"]["ratio_per_unit"],
            },
        ]
    if store is not None:
        ratios = store["ratios"]
        checks += [
            {
                "target": "single-event durable append >= 3x eventsourcing's",
                "need": 3.0,
                "got": ratios["single_append_eventsourcing_over_flowtrail"],
            },
            {
                "target": "replay in memory >= 2x eventsourcing's replay",
                "need": 2.0,
                "got": ratios["replay_in_memory_flowtrail_over_eventsourcing"],
            },
            {
                "target": "rebuild() >= 2x eventsourcing's replay",
                "need": 2.0,
                "got": ratios["rebuild_flowtrail_over_eventsourcing_replay"],
            },
        ]
    for check in checks:
        check["met"] = check["got"] >= check["need"]
    return checks


def report(flows: dict[str, Any] | None, store: dict[str, Any] | None, checks: list[dict[str, Any]]) -> None:
    if flows is not None:
        rows = []
        for scenario, label in SCENARIOS.items():
            row = flows[scenario]
            for side, name in SIDE_NAMES.items():
                figure = row[side]
                ratio = "" if side == "flowtrail" else f"{figure['ratio_per_unit']:,.0f}x"
                ratio_state = "" if side == "flowtrail" else f"{figure['ratio_per_state']:,.0f}x"
                states = figure["states_per_call"]
                rows.append(
                    [
                        label if side == "flowtrail" else "",
                        name,
                        spread(figure["per_unit_ms"], "ms", digits=3 if side == "flowtrail" else 1),
                        ratio,
                        str(states),
                        spread(figure["per_state_ms"], "ms", digits=3 if side == "flowtrail" else 1),
                        ratio_state,
                    ]
                )
        print_table(
            "Flows (median per unit, min-max over rounds; ratio = Prefect / flowtrail)",
            ["scenario", "side", "per unit", "ratio", "states/call", "per recorded state", "ratio"],
            rows,
        )
    if store is not None:
        f, e, r = store["flowtrail"], store["eventsourcing"], store["ratios"]
        rows = [
            [
                "single-event append",
                spread(f["single_append_us"], "us", digits=0),
                spread(e["single_append_us"], "us", digits=0),
                f"{r['single_append_eventsourcing_over_flowtrail']:.2f}x faster",
                spread(f["raw_single_insert_commit_us"], "us", digits=0),
            ],
            [
                "5-event append",
                spread(f["five_append_us"], "us", digits=0),
                spread(e["five_append_us"], "us", digits=0),
                f"{r['five_append_eventsourcing_over_flowtrail']:.2f}x faster",
                spread(f["raw_5_rows_per_tx_us"], "us", digits=0),
            ],
            ["100 events per transaction", "", "", "", spread(f["raw_100_per_tx_events_per_s"], "/s")],
            [
                "read + decode, 100k events",
                spread(f["read_all_decode_events_per_s"], "/s"),
                spread(e["read_decode_events_per_s"], "/s"),
                f"{r['read_decode_flowtrail_over_eventsourcing']:.2f}x",
                spread(f["raw_scan_decode_events_per_s"], "/s"),
            ],
            [
                "replay into memory, 100k events",
                spread(f["replay_in_memory_events_per_s"], "/s"),
                spread(e["replay_events_per_s"], "/s"),
                f"{r['replay_in_memory_flowtrail_over_eventsourcing']:.2f}x",
                "",
            ],
            [
                "rebuild() (views written) vs replay",
                spread(f["rebuild_events_per_s"], "/s"),
                spread(e["replay_events_per_s"], "/s"),
                f"{r['rebuild_flowtrail_over_eventsourcing_replay']:.2f}x",
                "",
            ],
        ]
        print_table(
            "Store (median, min-max over rounds)",
            ["figure", "flowtrail", "eventsourcing 9.5.6", "flowtrail vs eventsourcing", "raw sqlite3 floor"],
            rows,
        )
        sqlite = store["eventsourcing_sqlite"]
        print(
            f"  eventsourcing's SQLite: synchronous={sqlite['synchronous']}, journal_mode={sqlite['journal_mode']}; "
            f"mean stored event: flowtrail {store['logs']['flowtrail']['mean_event_bytes']:.0f} bytes, "
            f"eventsourcing {store['logs']['eventsourcing']['mean_event_bytes']:.0f} bytes"
        )
    print("\nTargets")
    for check in checks:
        print(
            f"  {'met   ' if check['met'] else 'MISSED'}  {check['target']}: {check['got']:,.2f}x (target {check['need']:,.0f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per comparison")
    parser.add_argument(
        "--quick", action="store_true", help="a short run to check the set-up (2 rounds, few calls)"
    )
    parser.add_argument("--only", choices=["flows", "store"], help="run one of the two comparisons")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (databases, logs)")
    args = parser.parse_args()
    for python in (PREFECT_PYTHON, ES_PYTHON):
        if not python.exists():
            raise SystemExit(
                f"{python} is missing: run .venv/bin/python benchmarks/compare/setup_envs.py first"
            )
    sys.path.insert(0, str(BENCHMARKS))
    from common import emit

    rounds = 2 if args.quick else args.rounds
    work = Path(tempfile.mkdtemp(prefix="flowtrail-compare-"))
    started = time.perf_counter()
    # Other work on the machine shows in every figure here; the load averages say how much there was.
    load = {"start": os.getloadavg()}
    flows = store = None
    raw: dict[str, Any] = {}
    try:
        if args.only in (None, "store"):
            print(f"store: flowtrail vs eventsourcing 9.5.6, {rounds} alternating rounds", flush=True)
            raw["store"] = store_rounds(work, rounds, args.quick)
            store = aggregate_store(raw["store"])
        if args.only in (None, "flows"):
            print(
                f"flows: flowtrail vs Prefect 3.9.1 (local server), {rounds} alternating rounds", flush=True
            )
            raw["flows"], waits = flow_rounds(work, rounds, QUICK_CALLS if args.quick else CALLS)
            flows = aggregate_flows(raw["flows"])
            flows["waited_for_quiet_server_s"] = summary(waits)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    load["end"] = os.getloadavg()
    checks = targets(flows, store)
    report(flows, store, checks)
    elapsed = time.perf_counter() - started
    print(
        f"\n{elapsed / 60:.1f} minutes; load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{x:.2f}' for x in load['start'])}, at the end {', '.join(f'{x:.2f}' for x in load['end'])}"
    )
    heartbeat = (
        {side: raw["flows"][side][0]["heartbeat_frequency"] for side in ("prefect-off", "prefect-default")}
        if "flows" in raw
        else None
    )
    versions = {}
    if "flows" in raw:
        versions["prefect"] = raw["flows"]["prefect-off"][0]["version"]
    if "store" in raw:
        versions["eventsourcing"] = raw["store"]["rounds"]["eventsourcing"][0]["version"]
    print(f"anchors: {', '.join(f'{name} {version}' for name, version in versions.items())}")
    emit(
        "compare",
        {
            "anchor_versions": versions,
            "rounds": rounds,
            "quick": args.quick,
            "calls_per_round": QUICK_CALLS if args.quick else CALLS,
            "prefect_heartbeat_frequency": heartbeat,
            "flows": flows,
            "store": store,
            "targets": checks,
            "raw_rounds": raw,
            "seconds": elapsed,
            "load_average": load,
        },
    )


if __name__ == "__main__":
    main()
