"""Summarize a step trace (LITELANG_STEP_TRACE_DIR, utils/profiling.StepTrace): why the GPU waited.

    python -m litelang.bench.step_trace DIR [--skip 20]

For each step the worker launched, the slack is how long before the previous step's GPU work
ended the launch was done (negative: the GPU sat idle waiting for it). A late launch is
charged to the stage that was last: the step reaching the worker late (the engine sent it
late), or the worker taking it late (busy answering the step before), or the launch itself.
"""

from __future__ import annotations

import argparse
import collections
import csv
import statistics
from pathlib import Path


def load(path: Path) -> tuple[dict[int, dict[str, tuple[float, float]]], list[tuple[str, float]]]:
    """(step -> event -> (time, value), garbage-collector passes as (generation, ms))."""
    steps: dict[int, dict[str, tuple[float, float]]] = collections.defaultdict(dict)
    gc_passes: list[tuple[str, float]] = []
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["step"] == "-1":
                gc_passes.append((row["event"], float(row["value"])))
            else:
                steps[int(row["step"])][row["event"]] = (float(row["t"]), float(row["value"]))
    return steps, gc_passes


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    return f"p50 {1000 * v[len(v) // 2]:.3f} / p90 {1000 * v[int(0.9 * (len(v) - 1))]:.3f} / max {1000 * v[-1]:.3f} ms"


ROUND_TRIP = [("worker", "launched", "worker", "gpu_done"), ("worker", "gpu_done", "worker", "answered"),
              ("worker", "answered", "engine", "reply"), ("engine", "reply", "engine", "processed"),
              ("engine", "processed", "next engine", "schedule"), ("next engine", "schedule", "next engine", "sent"),
              ("next engine", "sent", "next worker", "received"), ("next worker", "received", "next worker", "taken"),
              ("next worker", "taken", "next worker", "launched")]


def round_trip(worker: dict, engine: dict, skip: int) -> None:
    """Where a serial step's round trip goes: each stage's p50 over the steps s whose successor
    (the next step the worker got: the engine numbers the empty steps it never sends too) was
    scheduled after s's reply was processed, so nothing of it overlapped s."""
    stages: dict[str, list[float]] = collections.defaultdict(list)
    sent = sorted(s for s in worker if s >= skip)
    for s, nxt in zip(sent, sent[1:]):
        at = {"worker": worker[s], "engine": engine.get(s, {}), "next worker": worker[nxt],
              "next engine": engine.get(nxt, {})}
        events = [(a, x) for a, x, _, _ in ROUND_TRIP] + [ROUND_TRIP[-1][2:]]
        if not all(x in at[a] for a, x in events) or at["next engine"]["schedule"][0] < at["engine"]["processed"][0]:
            continue
        for a, x, b, y in ROUND_TRIP:
            stages[f"{a} {x} -> {b} {y}"].append(at[b][y][0] - at[a][x][0])
        stages["whole round trip"].append(at["next worker"]["launched"][0] - at["worker"]["launched"][0])
    print(f"serial round trips: {len(stages['whole round trip'])}")
    for name, values in stages.items():
        print(f"  {name}: {ms(values)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--skip", type=int, default=20, help="leading steps to ignore (warm-up)")
    ap.add_argument("--chain", action="store_true", help="also the round trip of steps scheduled only after "
                    "the step before them was answered (constrained requests wait for their last token)")
    args = ap.parse_args()
    (worker, worker_gc), (engine, engine_gc) = load(args.dir / "worker0.csv"), load(args.dir / "engine.csv")
    if args.chain:
        round_trip(worker, engine, args.skip)
    ids = sorted(s for s in worker if s >= args.skip and "launched" in worker[s] and "gpu_done" in worker.get(s - 1, {}))
    stage: dict[str, list[float]] = collections.defaultdict(list)
    blame = collections.Counter()
    gaps = []
    for s in ids:
        w, prev = worker[s], worker[s - 1]
        gaps.append(w.get("answered", (0, 0))[1] / 1000)
        slack = prev["gpu_done"][0] - w["launched"][0]
        stage["slack (previous GPU end - launch done)"].append(slack)
        stage["worker: received -> taken"].append(w["taken"][0] - w["received"][0])
        stage["worker: taken -> launched"].append(w["launched"][0] - w["taken"][0])
        e = engine.get(s, {})
        if "sent" in e and "schedule" in e:
            stage["engine: schedule -> sent"].append(e["sent"][0] - e["schedule"][0])
            stage["engine sent -> worker received"].append(w["received"][0] - e["sent"][0])
        if slack < 0:
            late = {"engine sent late": w["received"][0] - prev["gpu_done"][0],
                    "worker took late": w["taken"][0] - max(w["received"][0], prev["gpu_done"][0]),
                    "launch": w["launched"][0] - max(w["taken"][0], prev["gpu_done"][0])}
            blame[max(late, key=late.get)] += 1
    for name, gcs in (("engine", engine_gc), ("worker0", worker_gc)):
        for gen in sorted({g for g, _ in gcs}):
            d = [v for g, v in gcs if g == gen]
            print(f"  {name} {gen} passes: {len(d)}, {sum(d):.1f} ms in all, longest {max(d):.2f} ms")
    print(f"{len(ids)} steps; GPU gap before a step: mean {1000 * statistics.mean(gaps):.3f} ms, {ms(gaps)}")
    for name, values in stage.items():
        print(f"  {name}: {ms(values)}")
    late = sum(blame.values())
    print(f"  launched after the GPU went idle: {late} steps ({100 * late / max(len(ids), 1):.0f}%), last stage: "
          + ", ".join(f"{k} {v}" for k, v in blame.most_common()))


if __name__ == "__main__":
    main()
