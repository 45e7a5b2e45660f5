#!/usr/bin/env python3
"""Checks what tests/slurm/run.sh left in its temporary directory: the local reference batch
(local/), the results that the array tasks shared (cluster/), the summary as the first pass
left it, the tasks' logs and Slurm's view of each task. Prints one line per check and a closing
'N passed, N failed' line; exits 1 if any check failed."""

import argparse
import csv
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

COLUMNS = ["recipe", "experiment", "run", "hash", "status", "error", "params",
           "teacher_acc", "student_acc", "baseline_acc", "kd_gain", "worst_lang",
           "worst_acc", "compression", "wall_s"]
SAME_NUMBERS = ["teacher_acc", "student_acc", "baseline_acc"]
HEADER_LINE = re.compile(r"^==== kdx batch \(pid (\d+)\) (starts|resumes) (\S+) at unix time \d+: ")

passed, failed = 0, 0


def check(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok:   {what}")
    else:
        failed += 1
        print(f"FAIL: {what}" + (f"\n      {detail}" if detail else ""))
    return ok


def read_summary(path, what):
    """Rows keyed by 'experiment/run', after checking that the file is whole and one row a run."""
    text = path.read_text() if path.exists() else ""
    check(text.endswith("\n"), f"{what}: summary.csv exists and ends with a newline (not cut short)")
    rows = list(csv.reader(text.splitlines()))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    check(header[:len(COLUMNS)] == COLUMNS, f"{what}: summary.csv has the documented columns",
          f"header: {header}")
    bad = [r for r in body if len(r) != len(header)]
    check(not bad, f"{what}: every row has {len(header)} fields", f"bad rows: {bad}")
    good = [dict(zip(header, r)) for r in body if len(r) == len(header)]
    keys = Counter(f"{r['experiment']}/{r['run']}" for r in good)
    dup = [k for k, n in keys.items() if n > 1]
    check(not dup, f"{what}: one row per run", f"more than one row: {dup}")
    return {f"{r['experiment']}/{r['run']}": r for r in good}


def shard_lists(tmp, shards):
    owner = {}
    for k in range(shards):
        for line in (tmp / f"shard-{k}.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("run", "resume"):
                check(parts[1] not in owner, f"dry run: {parts[1]} belongs to one shard only",
                      f"shards {owner.get(parts[1])} and {k}")
                owner[parts[1]] = k
    return owner


def segments(log):
    """batch.log cut at each '==== kdx batch ...' line: (kind, pid, events) in order."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = HEADER_LINE.match(line)
        if m:
            out.append((m.group(2), m.group(1), []))
        elif line.startswith("event: ") and out:
            try:
                out[-1][2].append(json.loads(line[len("event: "):]))
            except json.JSONDecodeError:
                pass  # a line cut by the cancel's kill; the checks below count whole events
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", type=Path, required=True)
    ap.add_argument("--shards", type=int, required=True)
    ap.add_argument("--killed", required=True)
    ap.add_argument("--killed-task", type=int, required=True)
    ap.add_argument("--jobs", nargs=2, required=True)
    a = ap.parse_args()
    tmp, cluster = a.tmp, a.tmp / "cluster"

    # Slurm's own view: the cancelled task and nothing else failed; the second pass is clean.
    states = {}
    for line in (tmp / "states.txt").read_text().splitlines():
        p, k, state, code = line.split()
        states[(int(p), int(k))] = (state, code)
    for k in range(a.shards):
        want = ("CANCELLED", None) if k == a.killed_task else ("COMPLETED", "0:0")
        got = states.get((1, k))
        check(got and got[0] == want[0] and (want[1] is None or got[1] == want[1]),
              f"pass 1: task {k} ended {want[0]}", f"Slurm says {got}")
        check(states.get((2, k)) == ("COMPLETED", "0:0"), f"pass 2: task {k} ended COMPLETED 0:0",
              f"Slurm says {states.get((2, k))}")

    local = read_summary(tmp / "local" / "summary.csv", "local batch")
    final = read_summary(cluster / "summary.csv", "array")
    first = read_summary(tmp / "summary-pass1.csv", "array after pass 1")

    check(local and all(r["status"] == "ok" for r in local.values()),
          "local batch: every run ok", str({k: r["status"] for k, r in local.items()}))
    check(a.killed in local, f"local batch: has the run to cancel, {a.killed}")

    owner = shard_lists(tmp, a.shards)
    check(set(owner) == set(local), "dry run: the shards together make exactly the local batch",
          f"shards: {sorted(owner)}\n      local:  {sorted(local)}")

    check(set(final) == set(local), "array: the same runs as the local batch",
          f"missing: {sorted(set(local) - set(final))}, extra: {sorted(set(final) - set(local))}")
    left = {k: r["status"] for k, r in final.items() if r["status"] not in ("ok", "skipped")}
    check(not left, "array: every row ok or skipped after pass 2", str(left))
    for key in sorted(set(final) & set(local)):
        f, l = final[key], local[key]
        diff = {c: (l[c], f[c]) for c in ["recipe", "hash"] + SAME_NUMBERS if l[c] != f[c]}
        check(not diff, f"{key}: same recipe, hash and accuracies as the local batch",
              f"(local, array): {diff}")

    check(first.get(a.killed, {}).get("status") == "interrupted",
          f"pass 1: the cancelled task recorded {a.killed} as interrupted",
          f"row: {first.get(a.killed)}")

    # Nothing runs twice: each run is trained from scratch once, by the shard that owns it,
    # and finishes once; only the cancelled run is resumed, once, from its checkpoint; each
    # teacher is trained once although two tasks may want it at the same time.
    trained, waited = Counter(), []
    for key in sorted(local):
        log = cluster / key / "batch.log"
        if not check(log.exists(), f"{key}: has a batch.log"):
            continue
        segs = segments(log)
        kinds = Counter(kind for kind, _, _ in segs)
        want_resumes = 1 if key == a.killed else 0
        check(kinds["starts"] == 1 and kinds["resumes"] == want_resumes,
              f"{key}: started once, resumed {want_resumes} time(s)", f"batch.log: {dict(kinds)}")
        oks = [i for i, (_, _, ev) in enumerate(segs)
               for e in ev if e.get("type") == "run_finished" and e.get("status") == "ok"]
        check(len(oks) == 1 and oks[0] == len(segs) - 1, f"{key}: finished ok once, in its last go",
              f"ok in go(es) {oks} of {len(segs)}")
        for _, _, ev in segs:
            for e in ev:
                if e.get("type") == "teacher_ready" and e.get("source") == "trained":
                    trained[e.get("cache")] += 1
                if e.get("type") == "teacher_waiting":
                    waited.append(key)
        if key == a.killed and len(segs) >= 2:
            ev = segs[-1][2]
            started = [e for e in ev if e.get("type") == "run_started"]
            stages = {e["stage"]: e.get("from_step") for e in ev if e.get("type") == "stage_started"}
            check(started and started[0].get("resume") is True and "teacher" not in stages
                  and (stages.get("distill") or 0) > 0,
                  f"{key}: resumed from its checkpoint (teacher not retrained, distillation not from step 0)",
                  f"run_started {started}, stages {stages}")
            # The cancel's SIGTERM reached the run through its batch: it checkpointed the step it
            # was in, and the resumed run starts exactly there, redoing no step.
            saved = [e for e in segs[-2][2] if e.get("type") == "checkpointed"]
            last = saved[-1] if saved else {}
            done = max((e.get("step", 0) for e in segs[-2][2]
                        if e.get("type") == "step" and e.get("stage") == last.get("stage")), default=0)
            check(last and stages.get(last.get("stage")) == last.get("step") and done <= last.get("step"),
                  f"{key}: resumed at the step its cancelled go checkpointed last, past every step it did (none redone)",
                  f"last checkpoint {last}, last step reported {done}, resumed stages {stages}")
    again = {c: n for c, n in trained.items() if n != 1}
    check(trained and not again, f"array: each of {len(trained)} teacher(s) trained once",
          f"trained more than once: {again}")
    # Whether two tasks really wanted a teacher at the same moment is up to the scheduler's
    # timing, so it is reported, not required.
    print(f"info: runs that waited for a teacher another task was training: {waited or 'none'}")

    # The tasks' own logs, which no batch rewrites: each task runs only runs of its shard, the
    # two passes together start each run once and resume only the cancelled one, and each
    # batch, the cancelled one included, got to write its closing line (so it stopped its
    # children before Slurm's KILL).
    goes = Counter()
    for p, job in ((1, a.jobs[0]), (2, a.jobs[1])):
        for k in range(a.shards):
            out = tmp / "logs" / f"kdx-{job}_{k}.out"
            text = out.read_text(errors="replace") if out.exists() else ""
            goes.update(re.findall(r"^kdx batch: (starting|resuming) (\S+) ", text, re.M))
            ran = re.findall(r"^kdx batch: (?:starting|resuming) (\S+) ", text, re.M)
            strays = [r for r in ran if owner.get(r) != k]
            check(out.exists() and not strays, f"pass {p} task {k}: ran only runs of shard {k}",
                  f"ran {ran}")
            check(re.search(r"^batch: \d+ run\(s\)", text, re.M) is not None,
                  f"pass {p} task {k}: the batch wrote its closing line", f"log tail: {text[-400:]!r}")

    for key in sorted(local):
        want = {"starting": 1, "resuming": 1 if key == a.killed else 0}
        got = {verb: goes[(verb, key)] for verb in want}
        check(got == want, f"{key}: the tasks' logs show it started once, resumed {want['resuming']} time(s)",
              f"counts over both passes: {got}")

    leftovers = [p.name for p in cluster.iterdir()
                 if p.is_file() and p.name not in ("summary.csv", ".summary.lock")]
    check(not leftovers, "array: no stray temporary files beside summary.csv", str(leftovers))

    print(f"slurm: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
