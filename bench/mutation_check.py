"""Does the suite fail when the code is wrong? Deliberate bugs, each in a copy of the code.

Each mutation replaces one exact piece of source (found exactly once, or the mutation is
reported as not applicable: the code moved on) in a fresh copy of the repository's committed
tree (``git archive HEAD``; the working tree is never touched), then runs the relevant subset
of the suite in that copy, with the copy first on ``PYTHONPATH`` (checked: ``stream`` is
imported from the copy, in the tests and in the processes they start). The subsets need the
real services, which the test fixtures start, once per subset run.

A first run of every subset on the unmodified copy shows that they pass; a mutation is
*caught* when its subset then has at least one failure or error.

    python bench/mutation_check.py                    # the baseline, then every mutation
    python bench/mutation_check.py --only resume --no-baseline
    python bench/mutation_check.py --list

Takes ≈ 15-25 minutes on the shared 2-CPU machine (the crash matrix and the multi-worker
rollback test are the long ones).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATRIX = "tests/stream/learner/test_loop_crash_matrix.py::test_kill_9_at_every_step_changes_nothing"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "join",
        "labels after features at equal times",
        "learners/join.py",
        "        buffer.sort()\n",
        "        buffer.sort(key=lambda e: (e[0], -e[1], e[2], e[3], e[4]))\n",
        (
            "tests/learners/test_join.py",
            "tests/learners/test_core_equivalence.py",
            "tests/stream/learner/test_live_equivalence.py",
        ),
    ),
    Mutation(
        "resume",
        "resume one offset late (a partition with buffered events)",
        "stream/checkpoint/protocol.py",
        "            resume[key] = buffered[0]\n",
        "            resume[key] = buffered[0] + 1\n",
        (
            "tests/stream/checkpoint/test_protocol.py",
            "tests/stream/learner/test_loop_crash.py",
            f"{MATRIX}[1-in-process]",
            f"{MATRIX}[2-forked]",
        ),
    ),
    Mutation(
        "deadletter",
        "a skipped dead letter (the first of each batch)",
        "stream/kafka/deadletter.py",
        "        self.producer.send(self.topic, record.key, record.value, headers=headers)\n",
        "        if self.pending:\n"
        "            self.producer.send(self.topic, record.key, record.value, headers=headers)\n",
        ("tests/stream/kafka/test_deadletter.py", f"{MATRIX}[1-forked]"),
    ),
    Mutation(
        "unsigned",
        "an unsigned blob accepted (an all-zero MAC)",
        "learners/serialization.py",
        "    if not hmac.compare_digest(mac, expected):\n",
        "    if mac != bytes(_MAC_SIZE) and not hmac.compare_digest(mac, expected):\n",
        ("tests/stream/store/test_snapshots.py", "learners/serialization.py"),
    ),
    Mutation(
        "swap",
        "a swap that serves an older version (new number, previous estimator)",
        "stream/store/follower.py",
        "        seconds = time.perf_counter() - started\n"
        "        self._served = {**self._served, name: served}  # the swap\n"
        "        self.metrics.snapshot_swapped(name, version, meta.created_at, seconds)\n",
        "        seconds = time.perf_counter() - started\n"
        "        current = self._served.get(name)\n"
        "        if current is not None:\n"
        "            served = ServedModel.build(\n"
        "                name, current.estimator, version=version, kind=meta.kind, meta=meta\n"
        "            )\n"
        "        self._served = {**self._served, name: served}  # the swap\n"
        "        self.metrics.snapshot_swapped(name, version, meta.created_at, seconds)\n",
        (
            "tests/serving/test_app.py",
            "tests/serving/test_runner_swap.py",
            "tests/serving/test_runner_rollback.py",
        ),
    ),
]


@dataclass
class Outcome:
    label: str
    tests: tuple[str, ...]
    passed: int = 0
    failed: list[str] | None = None
    seconds: float = 0.0
    note: str = ""


def copy_tree(into: Path) -> None:
    """The committed tree of the repository, as files (no .git)."""
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def mutate(tree: Path, mutation: Mutation) -> str:
    """Apply ``mutation`` in ``tree``; an empty string, or why it could not be applied."""
    path = tree / mutation.path
    source = path.read_text()
    found = source.count(mutation.old)
    if found != 1:
        return f"not applicable: the original text occurs {found} times in {mutation.path}"
    path.write_text(source.replace(mutation.old, mutation.new))
    return ""


def run_tests(tree: Path, tests: tuple[str, ...], label: str) -> Outcome:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    where = subprocess.run(
        [sys.executable, "-c", "import stream; print(stream.__file__)"],
        cwd=tree, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(tree)), f"stream imported from {where.stdout.strip()}"
    report = tree / f"report-{label}.xml"
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         f"--junitxml={report}", *tests],
        cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    outcome = Outcome(label, tests, seconds=time.monotonic() - started, failed=[])
    if not report.exists():
        outcome.note = "pytest wrote no report"
        return outcome
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("skipped") is not None:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            assert outcome.failed is not None
            outcome.failed.append(f"{case.get('classname')}::{case.get('name')}")
        else:
            outcome.passed += 1
    return outcome


def table(baseline: Outcome | None, outcomes: list[tuple[Mutation, Outcome]]) -> str:
    lines = [
        "| mutation | file | subset run | passed | failed | caught | failing tests |",
        "|---|---|---|---:|---:|---|---|",
    ]
    if baseline is not None:
        lines.append(
            f"| (none: baseline) | | every subset below | {baseline.passed} "
            f"| {len(baseline.failed or [])} | {'-' if not baseline.failed else 'FAILS'} "
            f"| {short(baseline.failed or [])} |"
        )
    for mutation, o in outcomes:
        failed = o.failed or []
        caught = "yes" if failed else ("no" if not o.note else o.note)
        subset = ", ".join(Path(t.split("::")[0]).name + ("[…]" if "[" in t else "")
                           for t in dict.fromkeys(mutation.tests))  # fmt: skip
        lines.append(
            f"| {mutation.what} | `{mutation.path}` | {subset} | {o.passed} | {len(failed)} "
            f"| {caught} | {short(failed)} |"
        )
    return "\n".join(lines)


def short(names: list[str]) -> str:
    """Failing tests by module and function, parametrizations counted.

    >>> short(["tests.unit.test_a::test_x[1]", "tests.unit.test_a::test_x[2]", "m::test_y"])
    'test_a::test_x ×2, m::test_y'
    """
    counts: dict[str, int] = {}
    for name in names:
        key = name.rsplit(".", 1)[-1].split("[")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in counts.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="mutation name (repeatable)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmodified run")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.name:12} {m.what} ({m.path}): {' '.join(m.tests)}")
        return 0
    baseline = None
    outcomes: list[tuple[Mutation, Outcome]] = []
    with tempfile.TemporaryDirectory(prefix="riverstream-mutation-") as tmp:
        if not args.no_baseline:
            tree = Path(tmp) / "baseline"
            tree.mkdir()
            copy_tree(tree)
            union = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            baseline = run_tests(tree, union, "baseline")
            print(f"baseline: {baseline.passed} passed, {len(baseline.failed or [])} failed "
                  f"({baseline.seconds:.0f} s)", flush=True)  # fmt: skip
        for mutation in chosen:
            tree = Path(tmp) / mutation.name
            tree.mkdir()
            copy_tree(tree)
            problem = mutate(tree, mutation)
            if problem:
                outcome = Outcome(mutation.name, mutation.tests, failed=[], note=problem)
            else:
                outcome = run_tests(tree, mutation.tests, mutation.name)
            outcomes.append((mutation, outcome))
            print(f"{mutation.name}: {outcome.passed} passed, {len(outcome.failed or [])} failed "
                  f"({outcome.seconds:.0f} s) {outcome.note}", flush=True)  # fmt: skip
    print()
    print(table(baseline, outcomes))
    missed = [m.name for m, o in outcomes if not o.failed]
    broken = baseline is not None and bool(baseline.failed)
    return 1 if missed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
