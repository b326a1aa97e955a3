"""nnp side by side with TorchANI and SchNetPack, on this machine, in one run.

    python benchmarks/run_all.py               # the README table: ~35 min budget, 1 thread and all cores
    python benchmarks/run_all.py --quick       # a smoke test: small systems, 2 rounds, ~8 min budget
    python benchmarks/run_all.py --long        # + 10^5-atom single points (hours on 2 cores)
    python benchmarks/run_all.py --only md --budget 10
    python benchmarks/run_all.py --report      # the tables (markdown) of the saved results

Sections: inference (ANI batches), training (steps, and the shipped ``nnp train`` against
SchNetPack's Lightning loop), md (ASE velocity Verlet through each code's calculator), scaling
(single points from 10^3 atoms up, peak memory, fitted exponent); models/data/recipe
(other scripts) only with ``--only``.

Every case runs each framework variant ("arm") in its own process of the framework's venv
(benchmarks/.venvs/, envs.py) on the same cached inputs (prepare.py); nnp also runs in
SchNetPack's venv (its torch) next to every SchNetPack row. A case repeats rounds: each round
asks every arm, in alternating order, for one timing at 1 thread and at all cores (persistent
processes; a fresh process per round where peak memory counts). Rounds go on until the 90%
interval of every nnp/peer ratio lies within ±10% of it, or the case's share of ``--budget``
or ``--max-rounds`` ends it; the JSON says which. Goals are met only when the interval's
conservative end meets them (stats.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import envs  # noqa: E402
import prepare  # noqa: E402
import stats  # noqa: E402

RESULTS = HERE / "results"
WORKERS = HERE / "workers"
PEERS = ("torchani", "schnetpack")
NNP_ON_SPK = "nnp@spk-torch"  # nnp's worker in SchNetPack's venv: nnp on the peer's torch
TABLE_SECTIONS = ("inference", "training", "md", "scaling")
MARK = "@@BENCH "
SKIN = 1.0  # Å, `nnp md`'s default (md.skin); SchNetPack's SkinNeighborList gets the same



# ----------------------------------------------------------------- cases
def model_name(model: str) -> str:
    return {"ani": "ANI", "schnet": "SchNet", "painn": "PaiNN", "hipnn": "HIP-NN"}[model]


def spk_arms(nnp_variants: list[dict], spk_variants: list[dict]) -> dict:
    """SchNetPack rows: nnp, SchNetPack, and nnp on SchNetPack's torch with nnp's variants."""
    return {"nnp": nnp_variants, "schnetpack": spk_variants, NNP_ON_SPK: nnp_variants}


SPK_PAIRS = [("nnp", "schnetpack"), (NNP_ON_SPK, "schnetpack")]


def cases(quick: bool, long: bool) -> dict[str, list[dict]]:
    """Each case: name, worker case + params, arms {framework: [variants]}, the ratios it reports
    (pairs), goals, ``weight`` (its expected seconds per round: its share of the budget), ``fresh``
    (a new process per round: peak memory), ``repeats`` per request."""
    out: dict[str, list[dict]] = {s: [] for s in TABLE_SECTIONS}
    both = [{}, {"jit": True}]
    out["inference"].append(dict(
        name="ANI energy+forces, 256 small molecules (CHNO)", case="ani_batch", params={"batch_size": 256},
        arms={"nnp": [{}], "torchani": both}, pairs=[("nnp", "torchani")], inputs=["chno"], weight=8,
        goals=[("throughput", "nnp", "torchani", ">=", 2.0)]))
    for dataset, batch in (("aspirin", 32), ("chno", 64)):
        out["training"].append(dict(
            name=f"ANI training steps, {dataset} (batch {batch})", case="train",
            params={"dataset": dataset, "batch_size": batch, "model": "ani"},
            arms={"nnp": [{}], "torchani": both}, pairs=[("nnp", "torchani")], inputs=[dataset], weight=10,
            goals=[("throughput", "nnp", "torchani", ">=", 1.5)]))
        for model in ("schnet", "painn"):
            out["training"].append(dict(
                name=f"{model_name(model)} training steps, {dataset} (batch {batch})", case="train",
                params={"dataset": dataset, "batch_size": batch, "model": model},
                arms=spk_arms([{}], both), pairs=SPK_PAIRS, inputs=[dataset], needs_model=model,
                weight=25 if model == "painn" else 12, goals=[("throughput", "nnp", "schnetpack", ">=", 1.5)]))
    epochs, structures = (2, 160) if quick else (3, 320)
    for model in ("schnet", "painn"):
        out["training"].append(dict(
            name=f"{model_name(model)}: `nnp train` vs SchNetPack's Lightning loop, aspirin ({int(0.8 * structures)} "
                 f"train / {int(0.1 * structures)} val, batch 32, epochs 2-{epochs} timed)",
            case="train_command", params={"model": model, "dataset": "aspirin", "epochs": epochs,
                                          "structures": structures},
            arms=spk_arms([{}], [{}]), pairs=SPK_PAIRS, inputs=["aspirin"], needs_model=model, fresh=True,
            weight=60 if model == "painn" else 30, goals=[("throughput", "nnp", "schnetpack", ">=", 1.5)]))
    md_plan = [  # (system, model, steps per timed block, blocks per request)
        ("aspirin_md", "ani", 50, 3), ("aspirin_md", "schnet", 40, 3), ("aspirin_md", "painn", 20, 3),
        ("cu_2000", "ani", 3, 2), ("cu_2000", "schnet", 1, 2), ("cu_2000", "painn", 1, 1),
    ]
    labels = {"aspirin_md": "aspirin (21 atoms)", "cu_2000": "Cu fcc, 2,000 atoms, periodic"}
    for system, model, steps, blocks in md_plan:
        small = system == "aspirin_md"
        if quick:
            steps = max(1, steps // 2)
        nnp_v = [{"skin": SKIN}, {"jit": True, "skin": SKIN}] if small else [{"skin": SKIN}]
        if model == "ani":
            arms, pairs = {"nnp": nnp_v, "torchani": both if small else [{"jit": True}]}, [("nnp", "torchani")]
        else:
            spk_v = [{"skin": SKIN}, {"jit": True, "skin": SKIN}] if small else [{"skin": SKIN}]
            arms, pairs = spk_arms(nnp_v, spk_v), SPK_PAIRS
        goals = []
        if small:
            goals = [("throughput", "nnp", p, ">=", 2.0) for _, p in pairs[:1]]
        if system == "cu_2000" and model == "painn":
            goals = [("throughput", "nnp", "schnetpack", ">=", 1.0), ("peak_memory", "nnp", "schnetpack", "<=", 0.5)]
        out["md"].append(dict(
            name=f"MD {model_name(model)}, {labels[system]}", case="md",
            params={"system": system, "steps": steps, "model": model}, arms=arms, pairs=pairs, inputs=[system],
            needs_model=model, repeats=blocks, goals=goals, fresh=any(g[0] == "peak_memory" for g in goals),
            weight={"ani": 6, "schnet": 8, "painn": 12}[model] if small else {"ani": 10, "schnet": 40, "painn": 90}[model]))
    ani_sizes = [1000, 3000, 10000] if quick else [1000, 3000, 10000, 30000]
    mp_sizes = [1000] if quick else [1000, 10000]
    if long:
        ani_sizes, mp_sizes = ani_sizes + [100000], mp_sizes + [100000]
    for model, sizes in (("ani", ani_sizes), ("schnet", mp_sizes), ("painn", mp_sizes), ("hipnn", mp_sizes)):
        for n in sizes:
            if model == "ani":
                arms = {"nnp": [{}], "torchani": [{"neighborlist": "cell_list", "jit": True}] if n <= 30000 else []}
                pairs = [("nnp", "torchani")]
            elif model in ("schnet", "painn") and n <= (10000 if long else 1000):
                arms, pairs = {"nnp": [{}], "schnetpack": [{}]}, [("nnp", "schnetpack")]
            else:
                arms, pairs = {"nnp": [{}]}, []
            goals = [("peak_memory", "nnp", "torchani", "<=", 0.25)] if model == "ani" and n == 30000 else []
            per_katom = {"ani": 0.3, "schnet": 2.0, "painn": 4.0, "hipnn": 2.0}[model]
            out["scaling"].append(dict(
                name=f"{model_name(model)} single point + forces, {n:,} atoms", case="single_point",
                params={"system": f"box_{n}", "model": model}, arms={k: v for k, v in arms.items() if v},
                pairs=pairs if arms.get(pairs[0][1] if pairs else "") else [], inputs=[f"box_{n}"],
                needs_model=model, fresh=True, repeats=1 if n >= 10000 else 3, group=model, n_atoms=n,
                goals=goals, weight=max(3.0, per_katom * n / 1000 * 4)))
    return out


# ----------------------------------------------------------------- workers
def command(framework: str, case: str, params: dict, serve: bool) -> tuple[list[str], dict]:
    python = {"nnp": sys.executable, NNP_ON_SPK: str(envs.python_of("schnetpack"))}.get(framework)
    python = python or str(envs.python_of(framework))
    worker = "nnp" if framework in ("nnp", NNP_ON_SPK) else framework
    cmd = [python, str(WORKERS / f"{worker}_worker.py"), case, "--params", json.dumps(params)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TORCHANI_NO_WARN_EXTENSIONS="1",
               OMP_NUM_THREADS=str(max(THREADS)), MKL_NUM_THREADS=str(max(THREADS)))
    if framework == NNP_ON_SPK:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return cmd + (["--serve"] if serve else []), env


class Worker:
    """A worker process of one framework's venv answering requests (one JSON line each)."""

    def __init__(self, framework: str):
        cmd, env = command(framework, "", {}, serve=True)
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, bufsize=1, env=env, cwd=ROOT)

    def send(self, request: dict) -> bool:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def ask(self, request: dict, timeout: float) -> dict:
        if not self.send(request):
            return self._failed("worker exited")
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return self._failed(f"timed out after {timeout:.0f} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                return self._failed(f"exit {self.proc.wait()}")
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])

    def _failed(self, why: str) -> dict:
        self.close(kill=True)
        self.stderr.seek(0)
        lines = [ln for ln in self.stderr.read().strip().splitlines() if ln.strip()]
        return {"error": f"{why}: " + " | ".join(lines[-4:]), "dead": True}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, kill: bool = False) -> None:
        try:
            if kill:
                self.proc.kill()
            else:
                self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


POOL: dict[str, Worker] = {}  # one long-lived worker per framework for cases without memory


class Arm:
    """One framework variant of a case; ``ask`` returns one round's result. Cases that compare
    peak memory get a fresh process per round; the others share the framework's pooled worker."""

    def __init__(self, framework: str, variant: dict, case: dict):
        self.framework, self.variant, self.case = framework, variant, case
        self.key = f"{framework} {json.dumps(variant, sort_keys=True)}" if variant else framework
        self.error: str | None = None
        self.results: list[dict] = []  # the rounds it answered
        self.round_results: list[dict | None] = []  # one per round of the case

    def ask(self, threads: list[int], repeats: int, timeout: float) -> dict:
        request = {"case": self.case["case"], "params": {**self.case["params"], **self.variant},
                   "threads": threads, "repeats": repeats}
        if self.case.get("fresh"):
            worker = Worker(self.framework)
            res = worker.ask(request, timeout)
            if "dead" not in res:
                worker.close()
        else:
            if self.framework not in POOL or not POOL[self.framework].alive():
                POOL[self.framework] = Worker(self.framework)
            res = POOL[self.framework].ask(request, timeout)
        if "error" in res:
            self.error = res["error"]
            return res
        self.results.append(res)
        return res


def reset_pool() -> None:
    """Drop the prepared cases of the pooled workers (their models, data, MD state)."""
    for worker in POOL.values():
        if worker.alive():
            worker.send({"reset": True})


def close_pool() -> None:
    for worker in POOL.values():
        if worker.alive():
            worker.close()
    POOL.clear()


# ----------------------------------------------------------------- analysis
def best_arm(arms: list[Arm], threads: int) -> Arm | None:
    """A framework's fastest variant at ``threads`` (highest median throughput over its rounds)."""
    def rate(arm):
        rates = [r["by_threads"][str(threads)]["items_per_s"] for r in arm.results if str(threads) in r["by_threads"]]
        return statistics.median(rates) if rates else -1.0

    ok = [a for a in arms if a.results]
    return max(ok, key=rate) if ok else None


def per_round(arm: Arm, threads: int, what: str) -> list[float | None]:
    """One value per round of the case (None where the arm has none): throughput or peak memory."""
    out: list[float | None] = []
    for r in arm.round_results:
        if r is None:
            out.append(None)
        elif what == "throughput":
            out.append(r["by_threads"].get(str(threads), {}).get("items_per_s"))
        else:
            out.append((r.get("memory") or {}).get("peak_delta_mb"))
    return out


def pooled(arm: Arm, threads: int) -> dict:
    """Every repeat of every round pooled: median, min and max of one consistent sample."""
    rows = [r["by_threads"][str(threads)] for r in arm.results if str(threads) in r["by_threads"]]
    times = [t for row in rows for t in row.get("times", [row["median_s"]])]
    items = rows[-1]["items_per_s"] * rows[-1]["median_s"]
    med = statistics.median(times)
    out = {"framework": arm.framework, "variant_params": arm.variant, "variant": arm.results[-1].get("variant"),
           "torch": arm.results[-1].get("torch"), "rounds": len(rows), "median_s": med, "min_s": min(times),
           "max_s": max(times), "items_per_s": items / med, "unit": arm.results[-1].get("unit"),
           "round_items_per_s": [row["items_per_s"] for row in rows]}
    mem = [r["memory"]["peak_delta_mb"] for r in arm.results if r.get("memory")]
    if mem and memory_counts(arm.case):
        out["peak_delta_mb"] = statistics.median(mem)
        out["peak_rss_mb"] = statistics.median(r["memory"]["peak_rss_mb"] for r in arm.results if r.get("memory"))
    for key in ("pipeline_s_per_batch", "n_atoms", "first_call_s"):
        vals = [r[key] for r in arm.results if key in r]
        if vals:
            out[key] = statistics.median(vals)
    return out


def memory_counts(case: dict) -> bool:
    """Peak memory is compared where each round starts fresh processes (first call of a process)."""
    return bool(case.get("fresh"))


def analyse(case: dict, arms: list[Arm]) -> dict:
    """Per thread count: each framework's best variant (pooled), the paired ratios with intervals,
    and each framework's thread scaling (all cores / 1 thread, paired by round)."""
    by_fw: dict[str, list[Arm]] = {}
    for a in arms:
        by_fw.setdefault(a.framework, []).append(a)
    out: dict = {"threads": {}}
    for t in THREADS:
        best = {fw: best_arm(v, t) for fw, v in by_fw.items()}
        best = {fw: a for fw, a in best.items() if a is not None}
        entry: dict = {"frameworks": {fw: pooled(a, t) for fw, a in best.items()}, "ratios": {}}
        for num, den in case["pairs"]:
            if num not in best or den not in best:
                continue
            ratios = {}
            for what in ("throughput", "peak_memory") if memory_counts(case) else ("throughput",):
                a, b = per_round(best[num], t, what), per_round(best[den], t, what)
                vals = [x / y for x, y in zip(a, b) if x and y]
                s = stats.ratio_stats(vals)
                if s:
                    ratios[what] = s
            entry["ratios"][f"{num}/{den}"] = ratios
        out["threads"][str(t)] = entry
    if len(THREADS) > 1:
        lo, hi = str(min(THREADS)), str(max(THREADS))
        out["thread_scaling"] = {}
        for fw in by_fw:
            a_lo, a_hi = best_arm(by_fw[fw], min(THREADS)), best_arm(by_fw[fw], max(THREADS))
            if a_lo is None or a_hi is None:
                continue
            x, y = per_round(a_hi, int(hi), "throughput"), per_round(a_lo, int(lo), "throughput")
            s = stats.ratio_stats([p / q for p, q in zip(x, y) if p and q])
            if s:
                out["thread_scaling"][fw] = s
    return out


def settled(analysis: dict) -> bool:
    """Every throughput ratio (and memory ratio, when measured more than once) is within ±10%."""
    found = False
    for entry in analysis["threads"].values():
        for ratios in entry["ratios"].values():
            for what, s in ratios.items():
                if what == "peak_memory" and s["n"] < 2:
                    continue
                found = True
                if not stats.narrow(s):
                    return False
    return found


def judge_goals(case: dict, analysis: dict) -> list[dict]:
    out = []
    for what, num, den, op, value in case.get("goals", []):
        for t, entry in analysis["threads"].items():
            s = entry["ratios"].get(f"{num}/{den}", {}).get(what)
            out.append({"what": what, "pair": f"{num}/{den}", "threads": int(t), "goal": f"{op} {value:g}",
                        "median": s and s["median"], "lo": s and s["lo"], "hi": s and s["hi"],
                        "met": stats.goal_met(s, op, value)})
    return out


# ----------------------------------------------------------------- running
def run_case(case: dict, available: dict, args, cap_s: float, log) -> dict:
    """Interleaved rounds until every ratio is settled, or the time cap / round cap ends the case."""
    arms = []
    for fw, variants in case["arms"].items():
        if fw != "nnp" and (fw if fw != NNP_ON_SPK else "schnetpack") not in available:
            continue
        arms += [Arm(fw, v, case) for v in variants]
    t0 = time.time()
    ended, analysis, rounds = "round cap", {"threads": {}}, 0
    min_rounds = args.min_rounds
    for r in range(args.max_rounds):
        order = arms if r % 2 == 0 else arms[::-1]  # alternate: drift of the machine's load is shared
        threads = THREADS if r % 2 == 0 else THREADS[::-1]
        t_round = time.time()
        for a in order:
            if a.error:
                a.round_results.append(None)
                continue
            res = a.ask(threads, case.get("repeats") or args.repeats, args.timeout)
            if "error" in res:
                log(f"    {a.key}: {res['error'][:400]}")
                a.round_results.append(None)
            else:
                a.round_results.append(res)
        rounds = r + 1
        analysis = analyse(case, arms)
        took = time.time() - t_round
        summary = []
        for t, entry in analysis["threads"].items():
            for pair, ratios in entry["ratios"].items():
                s = ratios.get("throughput")
                if s:
                    iv = f" [{s['lo']:.2f}, {s['hi']:.2f}]" if s["lo"] else ""
                    summary.append(f"{pair}@{t}: {s['median']:.2f}{iv}")
        log(f"    round {rounds} ({took:.0f} s): " + ("; ".join(summary) or "no ratio"))
        if rounds >= min_rounds and settled(analysis):
            ended = "interval within ±10%"
            break
        if not any(not a.error for a in arms):
            ended = "every arm failed"
            break
        elapsed = time.time() - t0
        if rounds >= 2 and elapsed + took > cap_s:  # two rounds: the fewest that give an interval
            ended = f"time cap ({cap_s:.0f} s)"
            break
    reset_pool()
    entry = {k: v for k, v in case.items() if k not in ("arms",)}
    entry.update(rounds=rounds, ended_by=ended, cap_s=round(cap_s), analysis=analysis,
                 goals_judged=judge_goals(case, analysis),
                 arms={a.key: {"error": a.error, "rounds": [_compact(r, args.compact) for r in a.round_results]}
                       for a in arms})
    return entry


def _compact(result: dict | None, compact: bool) -> dict | None:
    if result is None or not compact:
        return result
    out = dict(result)
    out["by_threads"] = {t: {k: v for k, v in row.items() if k != "times"} for t, row in result["by_threads"].items()}
    return out


def fits(entries: list[dict]) -> dict:
    """Fitted cost exponent per model and framework (N >= 1,000), at each thread count."""
    out = {}
    for group in sorted({e["group"] for e in entries}):
        for t in THREADS:
            for fw in ("nnp", *PEERS):
                series = {}
                for e in entries:
                    if e["group"] != group:
                        continue
                    row = e["analysis"]["threads"].get(str(t), {}).get("frameworks", {}).get(fw)
                    if row:
                        series[e["n_atoms"]] = [e["n_atoms"] / v for v in row["round_items_per_s"]]
                s = stats.exponent_interval(series)
                if s:
                    out[f"{group}/{fw}@{t}"] = s
    return out


def machine_info(args) -> dict:
    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return ""

    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cpu": cpu, "cores": os.cpu_count(), "threads": THREADS, "python": platform.python_version(),
        "torch": {"nnp": torch.__version__, **{p: (envs.info(p) or {}).get("versions", {}).get("torch") for p in PEERS}},
        "peers": {p: envs.info(p) for p in PEERS}, "quick": args.quick, "long": args.long,
        "budget_min": args.budget, "min_rounds": args.min_rounds, "max_rounds": args.max_rounds,
        "tolerance": stats.TOLERANCE, "load_avg_start": os.getloadavg(),
    }


# ----------------------------------------------------------------- tables
def fmt_rate(row: dict | None) -> str:
    if not row:
        return "–"
    v = row["items_per_s"]
    unit = {"molecules/s": "mol/s", "conformations/s": "conf/s"}.get(row.get("unit") or "", row.get("unit") or "")
    text = f"{v:,.0f} {unit}" if v >= 100 else f"{v:,.3g} {unit}"
    if "peak_delta_mb" in row:
        text += f", {row['peak_delta_mb']:,.0f} MB"
    return text


def fmt_ratio(s: dict | None) -> str:
    if not s:
        return "–"
    iv = f" [{s['lo']:.2f}–{s['hi']:.2f}]" if s.get("lo") is not None else " (1 round)"
    return f"{s['median']:.2f}×{iv}"


def markdown(section: str, entries: list[dict], fit_rows: dict | None = None) -> str:
    """The README's table of one section: per case and thread count, nnp and the peer's best
    variant, the ratio's median over rounds with its 90% interval, memory ratio, thread scaling,
    goal and whether the interval's conservative end meets it, rounds and what ended them."""
    lines = [f"### {section}", "",
             "| benchmark | threads | nnp | peer (best variant) | nnp / peer [90% interval] | memory nnp / peer "
             "| thread scaling nnp, peer | goal: met by the interval? | rounds (ended by) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        scaling = e["analysis"].get("thread_scaling", {})
        for t, entry in e["analysis"]["threads"].items():
            fws = entry["frameworks"]
            pairs = [p for p in e["pairs"] if f"{p[0]}/{p[1]}" in entry["ratios"]] or [("nnp", None)]
            for num, den in pairs:
                ratios = entry["ratios"].get(f"{num}/{den}", {}) if den else {}
                peer = fws.get(den) if den else None
                peer_text = f"{den} {fmt_rate(peer)} ({peer.get('variant')})" if peer else "–"
                nnp_text = fmt_rate(fws.get(num))
                if num == NNP_ON_SPK:
                    nnp_text = f"on torch {fws[num].get('torch')}: {nnp_text}"
                sc = ", ".join(f"{scaling[fw]['median']:.2f}×" for fw in (num, den) if fw in scaling)
                goals = [g for g in e.get("goals_judged", []) if g["pair"] == f"{num}/{den}" and str(g["threads"]) == t]
                goal_text = "; ".join(
                    f"{'memory ' if g['what'] == 'peak_memory' else ''}{g['goal']}: "
                    f"{ {True: 'yes', False: 'no', None: 'n/a'}[g['met']]}" for g in goals) or ""
                lines.append(f"| {e['name']} | {t} | {nnp_text} | {peer_text} | {fmt_ratio(ratios.get('throughput'))} "
                             f"| {fmt_ratio(ratios.get('peak_memory'))} | {sc} | {goal_text} "
                             f"| {e['rounds']} ({e['ended_by']}) |")
    if fit_rows:
        lines += ["", "| fitted exponent t ∝ N^k (N ≥ 1,000) | k [90% bootstrap interval] | sizes | goal ≤ 1.05 met? |",
                  "|---|---|---|---|"]
        for key, s in fit_rows.items():
            met = {True: "yes", False: "no", None: "n/a"}[stats.goal_met(s, "<=", 1.05)] if key.startswith("ani/nnp") else ""
            lines.append(f"| {key} | {s['exponent']:.2f} [{s['lo']:.2f}–{s['hi']:.2f}] "
                         f"| {', '.join(f'{n:,}' for n in s['sizes'])} | {met} |")
    return "\n".join(lines) + "\n"


def report(results: Path) -> str:
    text = []
    for section in TABLE_SECTIONS:
        path = results / f"{section}.json"
        if not path.is_file():
            continue
        payload = json.loads(path.read_text())
        if any("analysis" not in e for e in payload.get("entries", [])):
            text.append(f"<!-- {path.name}: written by the former harness (no rounds/intervals): rerun -->\n")
            continue
        m = payload["machine"]
        text.append(f"<!-- {section}: commit {m.get('commit', '')[:10]}{' (dirty)' if m.get('dirty') else ''}, "
                    f"{m.get('date')}, threads {m.get('threads')}, torch {m.get('torch')}, load average "
                    f"{m.get('load_avg_start')} -> {m.get('load_avg_end')} -->")
        text.append(markdown(section, payload["entries"], payload.get("fits")))
    return "\n".join(text)


# ----------------------------------------------------------------- main
THREADS: list[int] = [1]


def main(argv=None) -> int:
    global THREADS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: small systems, 2 rounds, 8-minute budget")
    p.add_argument("--long", action="store_true", help="add 10^5-atom single points (hours on 2 cores)")
    p.add_argument("--only", nargs="*", help="sections: inference training md scaling (models data recipe)")
    p.add_argument("--match", default=None, help="only cases whose name contains this text")
    p.add_argument("--skip-peers", action="store_true", help="nnp only (no peer venvs)")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts (default: 1 and all cores, os.cpu_count())")
    p.add_argument("--budget", type=float, default=None, help="minutes for the whole run (default 35, quick 8)")
    p.add_argument("--min-rounds", type=int, default=None, help="rounds before the stopping rule applies (3; quick 2)")
    p.add_argument("--max-rounds", type=int, default=None, help="cap of rounds per case (10; quick 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per request (cases may set fewer)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per request")
    p.add_argument("--rebuild-envs", action="store_true", help="recreate the peer venvs")
    p.add_argument("--no-install", action="store_true", help="skip peers whose venv is missing")
    p.add_argument("--compact", action="store_true", help="omit per-repeat times from the JSON")
    p.add_argument("--report", action="store_true", help="print the markdown tables of the saved results and exit")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    results = args.out.resolve()
    if args.report:
        print(report(results))
        return 0
    cores = os.cpu_count() or 1
    THREADS = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
    args.budget = args.budget or (8 if args.quick else 35)
    args.min_rounds = args.min_rounds or (2 if args.quick else 3)
    args.max_rounds = max(args.max_rounds or (2 if args.quick else 10), args.min_rounds)
    sections = args.only or list(TABLE_SECTIONS)

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
                log(f"[setup] {peer}: not available, its columns are skipped")

    results.mkdir(parents=True, exist_ok=True)
    info = machine_info(args)
    models_present = {m for m in ("ani", "schnet", "painn", "hipnn") if (ROOT / "nnp" / "models" / f"{m}.py").is_file()}
    all_cases = cases(args.quick, args.long)
    plan = {s: [c for c in all_cases.get(s, []) if (not c.get("needs_model") or c["needs_model"] in models_present)
                and (not args.match or args.match.lower() in c["name"].lower())] for s in sections}
    t_start = time.time()
    budget_s = args.budget * 60
    left_weight = sum(c["weight"] for s in plan.values() for c in s)
    log(f"[plan] threads {THREADS}, budget {args.budget:g} min, rounds {args.min_rounds}-{args.max_rounds}, "
        f"{sum(len(v) for v in plan.values())} cases")
    for section in sections:
        if section in ("models", "data", "recipe"):
            script = HERE / f"{section}_bench.py"
            quick_args = {"models": ["--budget", "30"], "data": ["--sizes", "200000", "--max-batches", "50"],
                          "recipe": ["--train-per-molecule", "2", "--val-per-molecule", "3", "--test-per-molecule", "10",
                                     "--models", "ani", "--ablation", "0", "1", "2"]}
            cmd = [sys.executable, str(script)] + (quick_args[section] if args.quick else [])
            log(f"[{section}] {' '.join(cmd[1:])}")
            subprocess.run(cmd, cwd=ROOT)
            continue
        entries = []
        for case in plan[section]:
            prepare.ensure(case.get("inputs", []), log)
            if args.skip_peers:
                case = dict(case, arms={"nnp": case["arms"]["nnp"]}, pairs=[])
            left_s = max(0.0, budget_s - (time.time() - t_start))
            cap = left_s * case["weight"] / max(left_weight, 1e-9)
            left_weight -= case["weight"]
            log(f"[{section}] {case['name']} (cap {cap:.0f} s)")
            t0 = time.time()
            entry = run_case(case, available, args, cap, log)
            entry["wall_s"] = round(time.time() - t0, 1)
            entries.append(entry)
        payload = {"machine": dict(info, load_avg_end=os.getloadavg(),
                                   wall_s=round(time.time() - t_start)), "section": section, "entries": entries}
        if section == "scaling":
            payload["fits"] = fits(entries)
        (results / f"{section}.json").write_text(json.dumps(payload, indent=1))
        print(markdown(section, entries, payload.get("fits")), flush=True)
    close_pool()
    log(f"results in {results}/ ({(time.time() - t_start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
