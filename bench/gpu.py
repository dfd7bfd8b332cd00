"""The GPU matrix in one command: every GPU figure bench/RESULTS.md lists as not measured, and
the review's first-run checklist (notes/gpu-review.md), on one CUDA machine. The first thing to
run on any CUDA machine.

    python -m bench.gpu                  # the quick matrix, about 8 minutes on one H100 + 16 cores
    python -m bench.gpu --plan           # the sections, their expected minutes, the pieces
    python -m bench.gpu --full           # the whole checklist, about 21 minutes (budget 25)

Sections (``--plan`` lists them): env, agreement, backfill, serve, compile = the quick matrix
(piece 1: resnet152 and vit_b16 backfills at 40 000 images with CPU and nvJPEG decode, online at
1/16/128 clients behind HAProxy, fp16 top-1 agreement, compile on/off, peak GPU memory); model,
cudnn, recompile, threads, nvjpeg (piece 2) and race, fuzz, backfill_more, serve_more (piece 3)
complete the checklist. ``--sections a,b`` runs those, ``--skip a,b`` leaves some out. Sections
run in that order; a section that would not fit in what is left of ``--budget-minutes`` is
skipped (default 8 for the quick matrix, 25 with --full, 9.5 otherwise). It generates its own
dataset (``--n``, 40 000 JPEGs; reused from the temp dir when there).

On a machine that stops each command at 10 minutes (a time-sliced GPU host), run the checklist as three
commands; the second and third add their sections to the first's JSON (``--merge``), and the
last prints the whole table:

    python -m bench.gpu --piece 1                 # ~7.6 min: the quick matrix
    python -m bench.gpu --piece 2 --merge         # ~7.3 min: model, cudnn, recompile, threads, nvjpeg
    python -m bench.gpu --piece 3 --merge         # ~6.3 min: race, fuzz, backfill_more, serve_more

There, start each with ``mkdir -p /tmp/site && tar xJf .gpu/site-py312.tar.xz -C /tmp/site &&
export PYTHONPATH=/tmp/site:$PWD;`` (Ray and its packages) and end it with
``; cp bench/out/gpu.json $OUT/``; a machine given back between commands loses bench/out, so put
the returned gpu.json back in bench/out here and carry ``bench/out`` with the next piece.

Thresholds (the check column): fp16 top-1 agreement >= 99 %; end-to-end backfill resnet152 >=
6000 and vit_b16 >= 5000 img/s; >= 3000 req/s at 128 clients; no request or row errors; the
checklist's pass/fail checks (driver, nvJPEG, recompiles, threads, race and its control, fuzz).
The minutes are estimates from reading the code; each run's JSON has every section's real ones.

Output: one table (section, figure, value, check) and one JSON (``--out``, default
bench/out/gpu.json) with the date, machine, commands, versions, and per section its figures,
details and minutes, or why it was skipped, or the traceback of the error it raised (the run goes
on). The JSON is written after every section, so a run cut off keeps what it measured.

Without CUDA it exits with status 2 and says what it checked (``torch.cuda.is_available()``, the
torch build's CUDA version, the driver from nvidia-smi). ``--allow-cpu`` runs it anyway, to test
the harness: CUDA-only sections say "skipped: needs CUDA" and the rest run with tiny sizes.
Exit status: 0 if every section ran and passed its thresholds, 1 if any failed or raised, 2 on
refusal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.gpu_checks import (
    DATASET_MINUTES,
    FULL_BUDGET_MINUTES,
    PIECE_BUDGET_MINUTES,
    QUICK_BUDGET_MINUTES,
    SECTIONS,
    Section,
    by_name,
    piece,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "out" / "gpu.json"
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    choose = parser.add_mutually_exclusive_group()
    choose.add_argument("--sections", type=_names, help="comma-separated sections to run (default: the quick matrix)")
    choose.add_argument(
        "--piece", type=int, choices=(1, 2, 3), help="one of the three sets that each fit a 10-minute command"
    )
    choose.add_argument("--full", action="store_true", help="every section (the whole checklist)")
    parser.add_argument("--skip", type=_names, default=[], help="comma-separated sections to leave out")
    parser.add_argument("--plan", action="store_true", help="print the sections and expected minutes, run nothing")
    parser.add_argument(
        "--budget-minutes", type=float, help="skip sections that would not fit (default 8 quick, 25 --full, else 9.5)"
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="without CUDA, run the harness with tiny sizes (CUDA sections skip)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes even on CUDA (a smoke test of the harness)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--merge", action="store_true", help="keep the sections already in --out and add this run's")
    parser.add_argument("--n", type=int, help="images in the generated dataset (default 40000; 12 tiny)")
    parser.add_argument(
        "--data",
        type=Path,
        help="dataset folder (default: twinfer-bench-<n> in the temp dir; reused if it holds JPEGs)",
    )
    parser.add_argument("--clients", type=_ints, default=[1, 16, 128], help="serve: client counts")
    parser.add_argument("--duration", type=float, default=10.0, help="serve: measured seconds per client count")
    parser.add_argument("--warmup", type=float, default=2.0, help="serve: unmeasured seconds before each")
    parser.add_argument(
        "--ingress", choices=["haproxy", "default"], default="haproxy", help="serve: Serve's HTTP ingress"
    )
    parser.add_argument(
        "--recompile-backend", default="eager", help="recompile: torch.compile backend of the 9-size check"
    )
    parser.add_argument(
        "--in-child", action="store_true", help=argparse.SUPPRESS
    )  # one isolated section, run for a parent
    args = parser.parse_args(argv)
    known = by_name()
    unknown = [name for name in [*(args.sections or []), *args.skip] if name not in known]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return args


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _ints(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value.strip()]


def selected_sections(args: argparse.Namespace) -> list[Section]:
    if args.full:
        chosen = list(SECTIONS)
    elif args.piece:
        chosen = piece(args.piece)
    elif args.sections:
        chosen = [s for s in SECTIONS if s.name in args.sections]  # always in run order
    else:
        chosen = piece(1)
    return [s for s in chosen if s.name not in args.skip]


def budget_minutes(args: argparse.Namespace) -> float:
    if args.budget_minutes is not None:
        return args.budget_minutes
    if args.full:
        return FULL_BUDGET_MINUTES
    if args.piece or args.sections:
        return PIECE_BUDGET_MINUTES
    return QUICK_BUDGET_MINUTES


def plan_text(selected: list[Section], budget: float) -> str:
    names = {s.name for s in selected}
    lines = [
        (
            "bench.gpu sections (minutes: expected on one H100 + 16 cores, from reading the code; "
            "the JSON records real ones)"
        ),
        f"  {'':2}{'section':<15}{'min':>5}  piece  CUDA  what",
    ]
    for s in SECTIONS:
        mark = "*" if s.name in names else " "
        lines.append(
            f"  {mark} {s.name:<14}{s.minutes:>5.1f}  {s.piece:^5}  {'yes' if s.needs_cuda else 'no':<4}  {s.about}"
        )
    total = sum(s.minutes for s in selected) + DATASET_MINUTES
    lines.append(f"selected (*): {total:.1f} min with the dataset ({DATASET_MINUTES} min); budget {budget:g} min")
    for number in (1, 2, 3):
        minutes = sum(s.minutes for s in piece(number)) + DATASET_MINUTES
        lines.append(
            f"  piece {number} ({minutes:.1f} min): "
            f"python -m bench.gpu --piece {number}{' --merge' if number > 1 else ''}"
        )
    full = sum(s.minutes for s in SECTIONS) + DATASET_MINUTES
    quick = sum(s.minutes for s in piece(1)) + DATASET_MINUTES
    lines.append(
        f"quick matrix (piece 1): {quick:.1f} min, budget {QUICK_BUDGET_MINUTES:g}; "
        f"whole checklist: {full:.1f} min, budget {FULL_BUDGET_MINUTES:g}"
    )
    return "\n".join(lines)


def run_section(section: Section, ctx, log) -> dict:
    from bench.gpu_checks.common import Report

    report = Report()
    started = time.perf_counter()
    entry: dict = {}
    try:
        section.function()(ctx, report)
        entry["status"] = "fail" if any(f["pass"] is False for f in report.figures) else "ok"
    except Exception:  # noqa: BLE001 - recorded; the next section still runs
        entry["status"] = "error"
        entry["error"] = traceback.format_exc()
        log(entry["error"])
    entry.update(
        minutes=round((time.perf_counter() - started) / 60, 2),
        estimate_minutes=section.minutes,
        figures=report.figures,
        details=report.details,
    )
    return entry


def runs_isolated(section: Section, cuda: bool, args: argparse.Namespace) -> bool:
    return section.isolate and cuda and not args.in_child


def run_isolated(section: Section, ctx, args: argparse.Namespace, minutes_left: float, log) -> dict:
    """``section`` in a child ``python -m bench.gpu`` on the same dataset; its entry, or an error
    entry with the child's exit status and last lines when it died without one."""
    from bench.gpu_checks.common import run_child

    out = ctx.work / f"child-{section.name}.json"
    argv = [
        "--sections",
        section.name,
        "--in-child",
        "--out",
        str(out),
        "--budget-minutes",
        f"{max(minutes_left, 1):.2f}",
        "--n",
        str(ctx.images_wanted),
        "--data",
        str(ctx.data_dir),
        "--recompile-backend",
        args.recompile_backend,
    ]
    argv += ["--allow-cpu"] if args.allow_cpu else []
    argv += ["--tiny"] if args.tiny else []
    child = run_child("bench.gpu", argv, timeout=max(60.0, minutes_left * 60 + 60))
    for line in child["stderr"].splitlines():
        if line.startswith("[bench.gpu]"):
            log(f"(child) {line.removeprefix('[bench.gpu] ')}")
    entry = json.loads(out.read_text())["sections"].get(section.name) if out.exists() else None
    process = {"rc": child["rc"], "seconds": child["seconds"]}
    if entry is None:
        from bench.gpu_checks.common import child_failure

        return {
            "status": "error",
            "error": f"the child process gave no result: {child_failure(child)}\n{child['stderr_tail']}",
            "figures": [],
            "child": process,
        }
    if child["rc"] not in (0, 1):  # it wrote the section, then died (at exit, say)
        entry.setdefault("notes", []).append(f"child process ended with {child_failure(child)}")
    return entry | {"child": process}


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result, indent=2, default=str))
    partial.replace(path)


def table(result: dict) -> str:
    machine = result["machine"]
    gpus = sorted(
        {entry.get("gpu", "?") for entry in result.get("sections", {}).values() if entry["status"] != "skipped"}
    )
    header = [
        f"bench.gpu, {result['date']}: {machine['gpu'] or 'no GPU'}, "
        f"driver {machine['driver']}, CUDA {machine['torch_cuda']}, "
        f"{machine['cores']} cores" + (" (tiny sizes: a harness test, not measurements)" if result["tiny"] else ""),
    ]
    if len(gpus) > 1:
        header.append(
            f"NOTE: these sections ran on different GPUs ({', '.join(gpus)}); see each section's 'gpu' in the JSON"
        )
    rows = [("section", "figure", "value", "check")]
    order = [s.name for s in SECTIONS] + [name for name in result.get("sections", {}) if name not in by_name()]
    for name in order:
        entry = result.get("sections", {}).get(name)
        if entry is None:
            continue
        for figure in entry.get("figures", []):
            check = "" if figure["pass"] is None else ("pass" if figure["pass"] else "FAIL")
            if figure.get("threshold") and check:
                check += f" ({figure['threshold']})"
            rows.append((name, figure["figure"], _value(figure["value"]), check))
        if entry["status"] == "skipped":
            rows.append((name, "-", f"skipped: {entry['reason']}", ""))
        elif entry["status"] == "error":
            last = [line for line in entry["error"].strip().splitlines() if line.strip()][-1]
            rows.append((name, "-", f"error: {last}", "ERROR"))
    widths = [min(max(len(row[i]) for row in rows), cap) for i, cap in enumerate((14, 62, 90, 40))]
    lines = [*header, ""]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = selected_sections(args)
    budget = budget_minutes(args)
    if args.plan:
        print(plan_text(selected, budget))
        return 0

    from bench.gpu_checks import environment

    ray_was_running = _ray_running()  # a caller's Ray (and Serve) is left as it was
    status = environment.cuda_status()
    if not status["available"] and not args.allow_cpu:
        print(environment.refusal(status), file=sys.stderr)
        return 2
    if status["available"] and args.ingress == "haproxy" and any(s.name.startswith("serve") for s in selected):
        os.environ.update(HAPROXY_ENV)  # read when Serve starts: before Ray does

    def log(message: str) -> None:
        print(f"[bench.gpu] {message}", file=sys.stderr, flush=True)

    from bench.gpu_checks.common import Context

    cuda = bool(status["available"])
    tiny = args.tiny or not cuda
    previous = json.loads(args.out.read_text()) if args.merge and args.out.exists() else {}
    command = "python -m bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "commands": [*previous.get("commands", []), command],
        "machine": environment.machine(),
        "versions": environment.versions(),
        "cuda": status,
        "tiny": tiny,
        "budget_minutes": budget,
        "selected": [s.name for s in selected],
        "ingress": args.ingress,
        "sections": previous.get("sections", {}),
    }
    gpu_name = result["machine"]["gpu"] or "no GPU"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as work:
        ctx = Context(
            cuda=cuda,
            tiny=tiny,
            images_wanted=args.n or (12 if tiny else 40_000),
            data_root=args.data,
            work=Path(work),
            options={
                "clients": args.clients,
                "duration": args.duration,
                "warmup": args.warmup,
                "recompile_backend": args.recompile_backend,
            },
            deadline=time.monotonic() + budget * 60,
        )
        data_error = None
        if any(s.data and (cuda or not s.needs_cuda) for s in selected):
            log(f"dataset: {ctx.images_wanted} JPEGs in {ctx.data_dir}")
            try:  # before any section (and before CUDA starts in this process, for the generator's fork)
                ctx.images()
                result["dataset"] = ctx.dataset_info
            except Exception:  # noqa: BLE001 - e.g. scikit-image missing: the sections without data still run
                result["dataset"] = {"error": traceback.format_exc()}
                data_error = traceback.format_exc().strip().splitlines()[-1]
            log(f"dataset: {result['dataset']}")
        for section in selected:
            left = budget - (time.perf_counter() - started) / 60
            if section.needs_cuda and not cuda:
                entry = {"status": "skipped", "reason": "needs CUDA"}
            elif section.data and data_error:
                entry = {"status": "error", "error": f"no dataset: {data_error}", "figures": []}
            elif section.minutes > left and not args.in_child:
                entry = {
                    "status": "skipped",
                    "reason": (
                        f"would not fit: ~{section.minutes:g} min expected, "
                        f"{left:.1f} of --budget-minutes {budget:g} left"
                    ),
                }
                log(f"{section.name}: {entry['reason']}")
            else:
                log(f"{section.name} (~{section.minutes:g} min): {section.about}")
                entry = (
                    run_isolated(section, ctx, args, left, log)
                    if runs_isolated(section, cuda, args)
                    else run_section(section, ctx, log)
                )
                log(
                    f"{section.name}: {entry['status']}" + (f" in {entry['minutes']} min" if "minutes" in entry else "")
                )
            entry["gpu"] = gpu_name  # pieces merged from several commands may come from different machines
            result["sections"][section.name] = entry
            result["dataset"] = ctx.dataset_info or result.get("dataset") or previous.get("dataset")
            result["minutes"] = round((time.perf_counter() - started) / 60, 2)
            write_json(args.out, result)
        _stop_what_was_started(serve_started=ctx.serve_started, ray_started=not ray_was_running)
    print(table(result))
    print(f"\nJSON: {args.out}")
    statuses = [result["sections"][s.name]["status"] for s in selected]
    return 1 if any(status in ("fail", "error") for status in statuses) else 0


def _ray_running() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized()


def _stop_what_was_started(*, serve_started: bool, ray_started: bool) -> None:
    """Serve if this run started it, Ray if this run started it: a caller's stay as they were."""
    if not _ray_running():
        return
    import ray

    if serve_started or ray_started:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # noqa: BLE001 - shutting down; nothing left to measure
            pass
    if ray_started:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
