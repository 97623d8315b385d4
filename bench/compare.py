"""This checkout against another revision of it: the same workloads, alternating rounds.

A restructuring must not make saves slower. ``bench/run.py`` compares against
django-resto 1.3; this compares against an earlier commit of this repository, checked
out with ``git worktree`` into a temporary directory, on the same three real nginx
servers, each workload in a fresh interpreter, the two sides alternating which goes
first in every round. It reports each workload's median wall time and client CPU per
operation for both sides, and their ratio; ```--check`` exits 1 when a ratio of this
checkout to the baseline is above ``--limit`` (1.05: 5 % slower).

    .venv/bin/python bench/compare.py --baseline REV [--rounds N] [--check]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from bench.run import (  # noqa: E402
    LABELS,
    NEW,
    SMALL,
    Bench,
    Plan,
    default_tmp_dir,
    log,
    media_servers,
)

BASELINE = "baseline"
LABELS[BASELINE] = "the baseline"
#: (key, backend, size, host count, journal, settings) of the workloads compared. The
#: metrics (prometheus_client is in the test extra, so they are on here) are a feature
#: the baseline does not have: the last workload measures what they cost.
WORKLOADS: tuple[tuple[str, str, int, int, bool, dict[str, Any]], ...] = (
    ("hybrid_4k_3", "hybrid", SMALL, 3, False, {"RESTO_METRICS": False}),
    ("hybrid_4k_3_journal", "hybrid", SMALL, 3, True, {"RESTO_METRICS": False}),
    ("hybrid_1m_1", "hybrid", 1024 * 1024, 1, False, {"RESTO_METRICS": False}),
    ("hybrid_1m_3", "hybrid", 1024 * 1024, 3, False, {"RESTO_METRICS": False}),
    ("distributed_4k_3", "distributed", SMALL, 3, False, {"RESTO_METRICS": False}),
    ("hybrid_4k_3_metrics_on", "hybrid", SMALL, 3, False, {}),
)


class Comparison(Bench):
    """Bench with a second checkout of this package in place of django-resto 1.3."""

    def __init__(self, plan: Plan, tmp: Path, servers: list[Any], baseline: Path) -> None:
        super().__init__(plan, tmp, servers, Path(sys.executable))
        self.journal = False  # each workload says whether it runs with the journal
        self.baseline = baseline
        self.pythons[BASELINE] = Path(sys.executable)

    def env(self, package: str) -> dict[str, str]:
        env = super().env(NEW)
        if package == BASELINE:
            env["PYTHONPATH"] = str(self.baseline)
        return env

    def check_package(self, package: str, result: dict[str, Any]) -> None:
        root = self.baseline if package == BASELINE else REPO
        path = Path(result["django_resto_path"]).resolve()
        if path != (root / "django_resto").resolve():
            raise SystemExit(f"{package} run imported the wrong django_resto: {path}")

    def jobs(self, index: int) -> list[tuple[str, str, dict[str, Any]]]:
        order = [NEW, BASELINE] if index % 2 == 0 else [BASELINE, NEW]
        jobs = []
        for key, backend, size, hosts, journal, settings in WORKLOADS:
            small = size == SMALL
            spec = {
                "workload": "saves",
                "backend": backend,
                "hosts": self.hosts(hosts),
                "size": size,
                "count": self.plan.small_count if small else self.plan.medium_count,
                "warmup": self.plan.small_warmup if small else self.plan.medium_warmup,
                "journal": journal,
                "settings": settings,
            }
            jobs += [(key, package, spec) for package in order]
        return jobs


def _cpu(bench: Comparison, key: str, package: str) -> float | None:
    return bench.median(key, package, "cpu")


def report(bench: Comparison, baseline: str, rounds: int, limit: float) -> tuple[str, bool]:
    lines = [
        f"# This checkout against {baseline}",
        "",
        f"{rounds} alternating rounds on three real nginx (loopback); medians. A ratio is "
        "this checkout / the baseline: above 1 is slower.",
        "",
        "| workload | wall, this | wall, baseline | ratio | client CPU/op, this | "
        "client CPU/op, baseline | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ok = True
    for key, *_ in WORKLOADS:
        walls = [bench.median_duration(key, package) for package in (NEW, BASELINE)]
        cpus = [_cpu(bench, key, package) for package in (NEW, BASELINE)]
        wall_ratio = walls[0] / walls[1] if walls[0] and walls[1] else None
        cpu_ratio = cpus[0] / cpus[1] if cpus[0] and cpus[1] else None
        for ratio in (wall_ratio, cpu_ratio):
            if ratio is not None and ratio > limit:
                ok = False

        def ms(value: float | None) -> str:
            return "—" if value is None else f"{value * 1000:.3f} ms"

        def ratio_text(value: float | None) -> str:
            if value is None:
                return "—"
            return f"{value:.3f}" + ("" if value <= limit else " **over**")

        lines.append(
            f"| {key} | {ms(walls[0])} | {ms(walls[1])} | {ratio_text(wall_ratio)} | "
            f"{ms(cpus[0])} | {ms(cpus[1])} | {ratio_text(cpu_ratio)} |"
        )
    lines += ["", f"Limit: {limit:.2f}. {'Every' if ok else 'Not every'} ratio is within it."]
    return "\n".join(lines) + "\n", ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="a git revision of this repository")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limit", type=float, default=1.05)
    parser.add_argument("--output", type=Path, default=BENCH / "compare-results.md")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    plan = Plan(
        rounds=args.rounds,
        medium_count=40,
        medium_warmup=5,
        small_count=1000,
        small_warmup=20,
        big_size=0,
    )
    with tempfile.TemporaryDirectory(prefix="resto-compare-") as checkout:
        baseline = Path(checkout) / "tree"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            with (
                tempfile.TemporaryDirectory(prefix="resto-compare-", dir=default_tmp_dir()) as tmp,
                media_servers(Path(tmp), 3) as servers,
            ):
                bench = Comparison(plan, Path(tmp), servers, baseline)
                for index in range(args.rounds):
                    log(f"round {index + 1}/{args.rounds}")
                    bench.round(index)
                text, ok = report(bench, args.baseline, args.rounds, args.limit)
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)],
                check=False,
                capture_output=True,
            )
    args.output.write_text(text)
    print(text)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
