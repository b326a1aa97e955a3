"""nnp side by side with TorchANI and SchNetPack, on this machine, in one run.

    python benchmarks/run_all.py            # everything (peers installed on first use)
    python benchmarks/run_all.py --quick    # fewer repeats, smaller systems, no 10^5 atoms
    python benchmarks/run_all.py --only inference md --skip-peers

Sections: inference (ANI, batches of small molecules and 3k/30k-atom boxes),
training (ANI vs TorchANI's recipe; SchNet/PaiNN vs SchNetPack), md (ASE
velocity Verlet through each code's calculator), scaling (single points from
10^2 to 10^5 atoms, fitted exponent), plus models_bench.py and data_bench.py
when present. Every case runs in a fresh process of the framework's own venv
(benchmarks/.venvs/, see envs.py) on the same cached inputs (prepare.py);
frameworks alternate, ``--rounds`` times, and each number is the median over
all repeats. Results: benchmarks/results/<section>.json and a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import envs  # noqa: E402
import prepare  # noqa: E402

RESULTS = HERE / "results"
WORKERS = HERE / "workers"
PEERS = ("torchani", "schnetpack")
WORKER_OF: dict[str, str] = {}  # framework -> worker script, when a venv reuses another's worker
SPK = {"schnetpack": [{}]}


# ----------------------------------------------------------------- cases
def cases(quick: bool) -> dict[str, list[dict]]:
    """Each case: name, what is compared, the worker case + params, and the peers run."""
    big = [3000] if quick else [3000, 30000]
    scaling = [100, 300, 1000, 3000, 10000] if quick else [100, 300, 1000, 3000, 10000, 30000, 100000]
    out: dict[str, list[dict]] = {"inference": [], "training": [], "md": [], "scaling": []}
    out["inference"].append(
        dict(name="ANI energy+forces, 256 small molecules (CHNO)", case="ani_batch",
             params={"batch_size": 256}, peers={"torchani": [{}, {"jit": True}]}, inputs=["chno"])
    )
    for n in big:
        out["inference"].append(
            dict(name=f"ANI energy+forces, {n:,}-atom box", case="single_point",
                 params={"system": f"box_{n}"}, peers={"torchani": [{"neighborlist": "cell_list"}]},
                 inputs=[f"box_{n}"], memory=True, repeats=3 if n >= 30000 else None)
        )
    for dataset, batch in (("aspirin", 32), ("chno", 64)):
        out["training"].append(
            dict(name=f"ANI training, {dataset} (batch {batch})", case="train",
                 params={"dataset": dataset, "batch_size": batch, "model": "ani"},
                 peers={"torchani": [{}]}, inputs=[dataset])
        )
        for model in ("schnet", "painn"):
            out["training"].append(
                dict(name=f"{model_name(model)} training, {dataset} (batch {batch})", case="train",
                     params={"dataset": dataset, "batch_size": batch, "model": model},
                     peers=SPK, inputs=[dataset], needs_model=model)
            )
    # (system, model, steps per timed block, blocks, TorchScript variants?)
    md_plan = [
        ("aspirin_md", "ani", 50, 5, True), ("aspirin_md", "schnet", 50, 5, True),
        ("aspirin_md", "painn", 20, 5, True),
        ("cu_2000", "ani", 5, 3, True), ("cu_2000", "schnet", 3, 3, False), ("cu_2000", "painn", 2, 2, False),
    ]
    labels = {"aspirin_md": "aspirin (21 atoms)", "cu_2000": "Cu fcc, 2,000 atoms, periodic"}
    for system, model, steps, blocks, jit in md_plan:
        if quick:
            steps, blocks = max(1, steps // 2), min(blocks, 2)
        # both sides get their TorchScript variant where it can help; the faster one counts
        out["md"].append(
            dict(name=f"MD {model_name(model)}, {labels[system]}", case="md",
                 params={"system": system, "steps": steps, "model": model},
                 nnp_variants=[{}, {"jit": True}] if jit else [{}],
                 peers={"torchani": [{}, {"jit": True}] if jit else [{}]} if model == "ani" else SPK,
                 inputs=[system], needs_model=model, rounds=1, repeats=blocks)
        )
    # SchNet stops at 10^4 atoms (its (pairs x 128) filter tensors need ~10 GB at 10^5);
    # peers stop at 3x10^4
    for model, largest in (("ani", 100000), ("schnet", 10000)):
        for n in scaling:
            if n > largest:
                continue
            peer_runs = {"torchani": [{"neighborlist": "cell_list"}]} if model == "ani" else SPK
            peer_runs = peer_runs if n <= 30000 else {}
            out["scaling"].append(
                dict(name=f"{model_name(model)} single point, {n:,} atoms", case="single_point",
                     params={"system": f"box_{n}", "model": model}, peers=peer_runs,
                     inputs=[f"box_{n}"], needs_model=model, memory=True, group=model, n_atoms=n,
                     rounds=1, repeats=3 if n >= 30000 else None)
            )
    return out


def model_name(model: str) -> str:
    return {"ani": "ANI", "schnet": "SchNet", "painn": "PaiNN"}[model]


# ----------------------------------------------------------------- running
def run_worker(framework: str, case: str, params: dict, args, timeout: float,
               repeats: int | None = None) -> dict:
    python = sys.executable if framework == "nnp" else str(envs.python_of(framework))
    repeats = min(repeats, args.repeats) if (repeats and args.quick) else (repeats or args.repeats)
    worker = WORKER_OF.get(framework, framework)
    cmd = [python, str(WORKERS / f"{worker}_worker.py"), case, "--params", json.dumps(params),
           "--threads", str(args.threads), "--repeats", str(repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def merge(runs: list[dict]) -> dict:
    """Rounds of one framework+variant -> one result (median over all repeats)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    times = [t for r in ok for t in r.get("times", [r["median_s"]])]
    out = dict(ok[-1])
    out["median_s"] = statistics.median(times)
    out["times"] = times
    out["rounds"] = len(ok)
    scale = ok[-1]["items_per_s"] * ok[-1]["median_s"] if "items_per_s" in ok[-1] else None
    if scale is not None:
        out["items_per_s"] = scale / out["median_s"]
    if "steps_per_s" in out:
        out["steps_per_s"] = 1.0 / out["median_s"]
        out["items_per_s"] = out["steps_per_s"]
    for key in ("peak_rss_mb", "peak_delta_mb"):
        if key in out:
            out[key] = min(r[key] for r in ok)
    return out


def run_case(case: dict, available: dict, args, log) -> dict:
    rounds = 1 if args.quick else case.get("rounds", args.rounds)
    plan = [("nnp", variant) for variant in case.get("nnp_variants", [{}])]
    for peer, variants in case["peers"].items():
        for variant in variants:
            plan.append((peer, variant))
    raw: dict[tuple, list] = {(fw, json.dumps(v, sort_keys=True)): [] for fw, v in plan}
    for r in range(rounds):
        order = plan if r % 2 == 0 else plan[::-1]  # alternate to share the machine's drift
        for fw, variant in order:
            key = (fw, json.dumps(variant, sort_keys=True))
            if fw != "nnp" and fw not in available:
                raw[key].append({"error": available.get(f"{fw}:why", "not installed")})
                continue
            res = run_worker(fw, case["case"], {**case["params"], **variant}, args, args.timeout,
                             case.get("repeats"))
            raw[key].append(res)
            if "error" in res:
                log(f"    {fw} {variant or ''}: {res['error'][:300]}")
    entry = {k: v for k, v in case.items() if k not in ("peers",)}
    entry["results"] = {}
    for (fw, variant), runs in raw.items():
        res = merge(runs)
        res.pop("times", None) if args.compact else None
        entry["results"].setdefault(fw, []).append({"variant_params": json.loads(variant), **res})
    # best variant per framework (e.g. TorchANI eager vs TorchScript)
    best: dict[str, dict] = {}
    for fw, variants in entry["results"].items():
        ok = [v for v in variants if "items_per_s" in v]
        best[fw] = max(ok, key=lambda v: v["items_per_s"]) if ok else variants[0]
    entry["best"] = best
    nnp = best["nnp"]
    entry["ratio"] = {}
    for fw, res in best.items():
        if fw == "nnp" or "items_per_s" not in res or "items_per_s" not in nnp:
            continue
        entry["ratio"][fw] = {"throughput": nnp["items_per_s"] / res["items_per_s"]}
        if "peak_delta_mb" in res and "peak_delta_mb" in nnp and res["peak_delta_mb"] > 0:
            entry["ratio"][fw]["peak_memory"] = nnp["peak_delta_mb"] / res["peak_delta_mb"]
    return entry


def fit_exponent(points: list[tuple[int, float]], min_atoms: int = 1000) -> float | None:
    """Slope of log(time) vs log(n) over n >= min_atoms (1 = linear scaling)."""
    pts = [(math.log(n), math.log(t)) for n, t in points if n >= min_atoms and t > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


def machine_info(args) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip()
    except OSError:
        commit = ""
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit, "cpu": cpu, "cores": os.cpu_count(), "threads": args.threads,
        "python": platform.python_version(), "repeats": args.repeats, "quick": args.quick,
        "load_avg_start": os.getloadavg(),
        "peers": {p: envs.info(p) for p in PEERS},
    }


# ----------------------------------------------------------------- output
def fmt_rate(res: dict) -> str:
    if "error" in res:
        return "[red]error[/red]"
    if "items_per_s" not in res:
        return "–"
    v = res["items_per_s"]
    unit = {"molecules/s": "mol/s", "atoms/s": "atoms/s", "conformations/s": "conf/s"}.get(res.get("unit", ""), "steps/s")
    if "steps_per_s" in res:
        unit = "steps/s"
    text = f"{v:,.0f} {unit}" if v >= 100 else f"{v:,.2f} {unit}"
    if "peak_delta_mb" in res:
        text += f"\n{res['peak_delta_mb']:,.0f} MB peak"
    return text


def print_table(section: str, entries: list[dict], extra: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{section}", show_lines=True)
    table.add_column("benchmark")
    table.add_column("nnp", justify="right")
    table.add_column("peer (best variant)", justify="right")
    table.add_column("nnp / peer", justify="right")
    for e in entries:
        best = e["best"]
        peers = [fw for fw in best if fw != "nnp"]
        if not peers:
            table.add_row(e["name"], fmt_rate(best["nnp"]), "–", "–")
            continue
        for fw in peers:
            res = best[fw]
            label = f"{fw}: {fmt_rate(res)}"
            if res.get("variant"):
                label += f"\n({res['variant']})"
            ratio = e["ratio"].get(fw, {})
            text = f"{ratio['throughput']:.2f}x" if "throughput" in ratio else "–"
            if "peak_memory" in ratio:
                text += f"\nmem {ratio['peak_memory']:.2f}x"
            table.add_row(e["name"], fmt_rate(best["nnp"]), label, text)
    Console().print(table)
    if extra:
        Console().print(extra)


# ----------------------------------------------------------------- main
def main(argv=None) -> int:
    global RESULTS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller systems")
    p.add_argument("--only", nargs="*", help="sections: inference training md scaling models data recipe")
    p.add_argument("--skip-peers", action="store_true", help="nnp only (no peer venvs)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: stable on a shared machine)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per run (default 7, quick 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per case (quick: 1)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per worker run")
    p.add_argument("--rebuild-envs", action="store_true", help="recreate the peer venvs")
    p.add_argument("--no-install", action="store_true", help="skip peers whose venv is missing")
    p.add_argument("--compact", action="store_true", help="omit per-repeat times from the JSON")
    p.add_argument("--report", action="store_true", help="print the tables of the saved results and exit")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    RESULTS = args.out.resolve()
    if args.report:
        write_summary(show=True)
        return 0
    args.repeats = args.repeats or (3 if args.quick else 7)
    sections = args.only or ["inference", "training", "md", "scaling", "models", "data", "recipe"]

    def log(msg: str) -> None:
        print(msg, flush=True)

    available: dict = {}
    if not args.skip_peers:
        if args.rebuild_envs:
            import shutil

            shutil.rmtree(envs.VENVS, ignore_errors=True)
        for peer, ensure in envs.ENSURE.items():
            meta = envs.info(peer) or (None if args.no_install else ensure(log))
            if meta:
                available[peer] = meta
                log(f"[setup] {peer}: {meta['how']} -> {meta['versions']}")
            else:
                available[f"{peer}:why"] = "venv missing (--no-install)" if args.no_install else "install failed"
                log(f"[setup] {peer}: not available, its columns are skipped")

    RESULTS.mkdir(parents=True, exist_ok=True)
    all_cases = cases(args.quick)
    info = machine_info(args)
    models_present = {m for m in ("ani", "schnet", "painn") if (ROOT / "nnp" / "models" / f"{m}.py").is_file()}
    summary = {}
    for section in sections:
        if section in ("models", "data", "recipe"):
            script = HERE / f"{section}_bench.py"
            if not script.is_file():
                log(f"[{section}] {script.name} not present: skipped")
                continue
            quick_args = {"models": ["--budget", "30"], "data": ["--sizes", "200000", "--max-batches", "50"],
                          "recipe": ["--train-per-molecule", "2", "--val-per-molecule", "3", "--test-per-molecule", "10",
                                     "--models", "ani", "--ablation", "0", "1", "2"]}
            cmd = [sys.executable, str(script)] + (quick_args[section] if args.quick else [])
            log(f"[{section}] {' '.join(cmd[1:])}")
            rc = subprocess.run(cmd, cwd=ROOT).returncode
            summary[section] = {"returncode": rc}
            continue
        entries = []
        for case in all_cases[section]:
            if case.get("needs_model") and case["needs_model"] not in models_present:
                log(f"[{section}] {case['name']}: nnp/models/{case['needs_model']}.py missing, skipped")
                continue
            prepare.ensure(case.get("inputs", []), log)
            if args.skip_peers:
                case = dict(case, peers={})
            log(f"[{section}] {case['name']}")
            t0 = time.time()
            entry = run_case(case, available, args, log)
            entry["wall_s"] = round(time.time() - t0, 1)
            entries.append(entry)
        extra = None
        payload = {"machine": info, "section": section, "entries": entries}
        if section == "scaling":
            fits = {}
            for group in sorted({e["group"] for e in entries}):
                for fw in ("nnp", *PEERS):
                    pts = [(e["n_atoms"], e["best"][fw]["median_s"]) for e in entries
                           if e["group"] == group and fw in e["best"] and "median_s" in e["best"][fw]]
                    slope = fit_exponent(pts)
                    if slope is not None:
                        fits[f"{group}/{fw}"] = {"exponent": slope, "points": pts}
            payload["fits"] = fits
            extra = "fitted exponent t ~ N^k (N >= 1,000): " + ", ".join(
                f"{k} k={v['exponent']:.2f}" for k, v in fits.items())
        payload["machine"]["load_avg_end"] = os.getloadavg()
        (RESULTS / f"{section}.json").write_text(json.dumps(payload, indent=1))
        print_table(section, entries, extra)
        summary[section] = [{"name": e["name"], "ratio": e["ratio"]} for e in entries]
    write_summary(summary)
    log(f"results in {RESULTS}/")
    return 0


def write_summary(extra: dict | None = None, show: bool = False) -> dict:
    """summary.json from every section file present (so a partial rerun keeps the rest)."""
    out: dict = {"sections": {}}
    for section in ("inference", "training", "md", "scaling"):
        path = RESULTS / f"{section}.json"
        if not path.is_file():
            continue
        payload = json.loads(path.read_text())
        out["sections"][section] = {
            "machine": {k: payload["machine"].get(k) for k in ("date", "commit", "threads", "load_avg_start",
                                                                 "load_avg_end")},
            "entries": [
                {"name": e["name"],
                 "nnp": e["best"]["nnp"].get("items_per_s"),
                 "peers": {fw: r.get("items_per_s") for fw, r in e["best"].items() if fw != "nnp"},
                 "unit": e["best"]["nnp"].get("unit") or "steps/s",
                 "ratio": e["ratio"]}
                for e in payload["entries"]
            ],
        }
        if "fits" in payload:
            out["sections"][section]["fits"] = {k: v["exponent"] for k, v in payload["fits"].items()}
        if show:
            extra_line = None
            if "fits" in payload:
                extra_line = "fitted exponent t ~ N^k (N >= 1,000): " + ", ".join(
                    f"{k} k={v['exponent']:.2f}" for k, v in payload["fits"].items())
            print_table(section, payload["entries"], extra_line)
    for key, value in (extra or {}).items():
        if key in ("models", "data", "recipe"):
            out["sections"][key] = value
    (RESULTS / "summary.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(main())
