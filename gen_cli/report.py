"""gen-report: turn a run or a sweep folder into report.md, report.csv and PNG figures.

    gen-report outputs/multirun/2025-01-01/12-00-00
    gen-report DIR --target eval/acc=0.85 --best-by eval/acc --out DIR/report
    gen-report --synthetic figures/        # Rosenbrock and Beale trajectories of every method
    gen-report outputs/suite --leaderboard  # one leaderboard across a suite's workloads
    gen-report outputs/sensitivity --sensitivity  # the final metric against the initial lr

Bad input (a missing path, a file, a folder without runs, a malformed option) gets one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

EPILOG = """\
DIR is a run folder (summary.json, .hydra/config.yaml, tb/), a sweep folder of them, or a
folder of sweeps. Runs are grouped by their config minus the seed; report.md and
report.csv hold mean ± std over seeds, statuses counted (diverged runs are never dropped),
steps and wall time to the target, per-step cost against the same config with
lr=constant, passes per step and peak memory. With --synthetic, DIR is the folder the
trajectory figures are written to (rosenbrock.png, beale.png). With --leaderboard, DIR is a
suite folder as gen-suite writes it (DIR/<workload>/<row>/<run>): leaderboard.md,
leaderboard.csv and performance_profile.png (default: DIR/leaderboard). With --sensitivity,
DIR is a folder gen-suite --sensitivity wrote (DIR/<workload>/sensitivity/<row>/x<mult>/<run>):
sensitivity.md and sensitivity_<workload>.png (default: DIR/sensitivity).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gen-report", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="run or sweep folder (with --synthetic: output folder)")
    p.add_argument("--out", help="where to write the report (default: DIR/report)")
    p.add_argument("--target", metavar="TAG=VALUE",
                   help="level for steps/time to target, e.g. eval/acc=0.85 or eval/loss=0.3 "
                        "(default: 95%% of the best group's mean final eval accuracy)")
    p.add_argument("--best-by", default="eval/acc", metavar="METRIC",
                   help="rank each method's settings by this mean final metric: eval/acc "
                        "(default), eval/loss, train/loss, or best_eval_acc / best_eval_loss")
    p.add_argument("--no-trajectories", action="store_true",
                   help="skip the recomputed 2-D trajectories for rosenbrock/beale runs")
    p.add_argument("--synthetic", action="store_true",
                   help="draw every method's path on Rosenbrock and Beale into DIR instead")
    p.add_argument("--steps", type=int, default=None,
                   help="with --synthetic: steps per path (default 500)")
    p.add_argument("--leaderboard", action="store_true",
                   help="rank the rows of a suite folder across its workloads instead")
    p.add_argument("--sensitivity", action="store_true",
                   help="the final metric against the initial lr of a gen-suite --sensitivity "
                        "folder instead")
    return p


def fail(message: str, code: int = 2) -> None:
    print(f"gen-report: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # Imported after parsing so that --help is instant.
    from genlr.messages import one_line
    from genlr.report import NoRunsError, write_report

    suite_flags = (("--target", args.target), ("--synthetic", args.synthetic),
                   ("--best-by", args.best_by != "eval/acc"), ("--steps", args.steps is not None),
                   ("--no-trajectories", args.no_trajectories))
    if args.sensitivity:
        given = [flag for flag, used in (("--leaderboard", args.leaderboard), *suite_flags) if used]
        if given:
            fail(f"{given[0]} does not apply to --sensitivity (its metric is each workload's "
                 "objective)")
        from genlr.report.sensitivity import write_sensitivity

        argv = sys.argv[1:] if argv is None else argv
        try:
            report = write_sensitivity(args.dir, out=args.out,
                                       command="gen-report " + " ".join(argv))
        except NoRunsError as err:
            fail(str(err))
        print(f"gen-report: {len(report.rows)} row(s) on {len(report.workloads)} workload(s) -> "
              f"{report.files[0]}, " + ", ".join(p.name for p in report.files[1:]))
        return
    if args.leaderboard:
        given = [flag for flag, used in suite_flags if used]
        if given:
            fail(f"{given[0]} does not apply to --leaderboard (each workload's target is 99% "
                 "of its best row's mean)")
        from genlr.report.leaderboard import write_leaderboard

        argv = sys.argv[1:] if argv is None else argv
        try:
            board = write_leaderboard(args.dir, out=args.out, command="gen-report " + " ".join(argv))
        except NoRunsError as err:
            fail(str(err))
        print(f"gen-report: {len(board.entries)} row(s) on {len(board.workloads)} workload(s) -> "
              f"{board.files[0]}, " + ", ".join(p.name for p in board.files[1:]))
        return
    if args.synthetic:
        from genlr.report.trajectories import DEFAULT_STEPS, synthetic_figures

        steps = args.steps or DEFAULT_STEPS
        if steps < 1:
            fail("--steps must be a positive integer")
        if os.path.exists(args.dir) and not os.path.isdir(args.dir):
            fail(f"{args.dir} is a file; --synthetic needs an output folder")
        try:
            os.makedirs(args.dir, exist_ok=True)
        except OSError as err:
            fail(f"cannot create the output folder {args.dir} ({err.strerror or type(err).__name__})")
        for task, (figure, paths) in synthetic_figures(args.dir, steps=steps).items():
            print(f"gen-report: wrote {figure}")
            for path in paths:
                if path.status != "completed":
                    print(f"  {task}: {path.label}: {path.status} ({path.message})")
        return
    argv = sys.argv[1:] if argv is None else argv
    try:
        report = write_report(args.dir, out=args.out, target=args.target, best_by=args.best_by,
                              trajectories=not args.no_trajectories,
                              command="gen-report " + " ".join(argv))
    except NoRunsError as err:
        fail(str(err))
    except ValueError as err:
        fail(one_line(err))
    except OSError as err:
        fail(one_line(err, with_type=True), code=1)
    print(f"gen-report: {len(report.runs)} run(s), {len(report.groups)} group(s) -> "
          f"{report.out / 'report.md'}, report.csv, "
          f"{sum(1 for p in report.files if p.suffix == '.png')} figure(s)")
    line = report.incomplete_line()
    if line:
        print(f"gen-report: {line}")
    for best, ranked in report.best:
        if len(ranked) > 1:
            print(f"gen-report: best {best.method[0]} + {best.method[1]} by "
                  f"{report.best_by}: {best.name} ({best.stats[report.best_by].text()})")

if __name__ == "__main__":
    main()
