"""Two sniper jobs at once on the same cores: thread tuning off (old) vs on (new).

    .venv/bin/python benchmarks/concurrency.py [--data /tmp/syn] [--iters 12] [--no-predict]

Every job is a real ``sniper`` command in its own process, DataLoader workers and the chip
mining pool included: ``sniper train`` with ``--config cpu_small`` on the synthetic dataset
(``sniper make-dataset``; generated into ``--workdir`` when ``--data`` has none), detector stage
only (``train.negatives=false``), one log row per iteration; and ``sniper predict`` of that
run's model on ``--predict-images`` validation images. Each case runs with
``SNIPER_THREADS=off`` (old: the libraries' defaults, i.e. one busy-waiting OpenMP thread per
core) and without it (new: ``sniper.runtime.configure_threads``), interleaved old/new:

(a) alone: train s/iter, predict s/image;
(b) two trainings at once: s/iter of each over the iterations both were training;
(c) a prediction started while a training runs: predict s/image, and the training's s/iter over
    the prediction's inference window.

"Fraction of solo" is solo time / concurrent time for the same mode (1.0: no slowdown; two jobs
sharing the cores perfectly would each get about 0.5 of a CPU-bound solo run). The first
``--warmup`` iterations of each training are not timed. Before starting it waits (up to
``--wait-quiet`` seconds) for the machine to be idle, and it reports the load it saw: CPU time
of other processes and hypervisor steal during each case, as fractions of the machine.
Prints a table and writes ``benchmarks/results/concurrency.json``. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sniper.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BATCH = 8  # cpu_small's batch, set explicitly so s/iter = BATCH / chips_per_s
# Variables the comparison controls: the benchmark's own environment must not leak into it.
THREAD_ENV = (
    "SNIPER_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_PROC_BIND",
)  # fmt: skip
MODES = {"old": {"SNIPER_THREADS": "off"}, "new": {}}
# Until sniper/cli/main.py calls configure_threads itself, jobs start through this launcher,
# which does exactly what the CLI's start-up does: configure_threads() before anything else.
LAUNCHER = (
    "from sniper.runtime import configure_threads; configure_threads(); "
    "from sniper.cli.main import main; raise SystemExit(main())"
)


def cli_prefix() -> tuple[list[str], str]:
    """How to start ``sniper``: the real CLI when it configures threads itself, else the launcher."""
    # the module, not the function `main` that sniper.cli re-exports under the same name; no torch
    cli_main = importlib.import_module("sniper.cli.main")
    if "configure_threads" in inspect.getsource(cli_main):
        return [PY, "-m", "sniper"], "python -m sniper (the CLI calls configure_threads)"
    return [PY, "-c", LAUNCHER], "launcher: configure_threads() then sniper.cli.main.main()"


# ---------------------------------------------------------------- machine load


def cpu_jiffies() -> list[int]:
    """/proc/stat's machine-wide counters: user nice system idle iowait irq softirq steal ..."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class LoadMeter:
    """Machine CPU use during a case: ours (reaped children), other processes', and steal."""

    start: list[int] = field(default_factory=cpu_jiffies)
    ours0: float = field(default_factory=children_cpu_s)
    t0: float = field(default_factory=time.perf_counter)

    def stop(self) -> dict[str, float]:
        d = [b - a for a, b in zip(self.start, cpu_jiffies())]
        total = max(1, sum(d[:8]))
        hz = os.sysconf("SC_CLK_TCK")
        busy = sum(d[:8]) - d[3] - d[4] - d[7]
        cores_s = total / hz  # machine CPU-seconds in the interval
        ours = children_cpu_s() - self.ours0
        return {
            "seconds": round(time.perf_counter() - self.t0, 1),
            "ours": round(ours / cores_s, 3),
            "other": round(max(0.0, busy / hz - ours) / cores_s, 3),
            "steal": round(d[7] / total, 3),
            "idle": round((d[3] + d[4]) / total, 3),
        }


def busy_fraction(seconds: float = 3.0) -> float:
    a = cpu_jiffies()
    time.sleep(seconds)
    d = [y - x for x, y in zip(a, cpu_jiffies())]
    return 1 - (d[3] + d[4]) / max(1, sum(d[:8]))


def wait_until_quiet(limit_s: float, threshold: float = 0.1) -> dict:
    """Wait (60 s at a time, at most ``limit_s``) until the machine is below ``threshold`` busy."""
    t0 = time.perf_counter()
    while True:
        busy = busy_fraction()
        waited = time.perf_counter() - t0
        if busy < threshold or waited >= limit_s:
            return {"busy_at_start": round(busy, 3), "waited_s": round(waited), "loadavg": os.getloadavg()}
        print(f"machine {busy:.0%} busy (load {os.getloadavg()[0]:.1f}): waiting 60 s", file=sys.stderr)
        time.sleep(60)


# ---------------------------------------------------------------- jobs


@dataclass
class Job:
    """One ``sniper`` process, in its own session (so that stopping it stops its workers)."""

    name: str
    proc: subprocess.Popen
    out: Path
    log: Path | None = None  # train: logs/detector.jsonl, read as it grows
    iters: list[tuple[float, float]] = field(default_factory=list)  # (end time, seconds) per iteration
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    _offset: int = 0

    def poll(self) -> None:
        if self.log is not None and self.log.exists():
            with open(self.log) as f:
                f.seek(self._offset)
                chunk = f.read()
            now = time.perf_counter()
            complete = chunk[: chunk.rfind("\n") + 1]
            self._offset += len(complete)
            for line in complete.splitlines():
                self.iters.append((now, BATCH / json.loads(line)["chips_per_s"]))
        if self.ended is None and self.proc.poll() is not None:
            self.ended = time.perf_counter()

    def stop(self) -> None:
        """SIGINT (the CLI stops cleanly and joins its DataLoader workers), then SIGKILL."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.poll()


def job_env(mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    return {**env, **MODES[mode], "PYTHONUNBUFFERED": "1"}


def start(name: str, argv: list[str], out: Path, mode: str, log: Path | None) -> Job:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as f:
        proc = subprocess.Popen(
            argv, env=job_env(mode), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Job(name, proc, out, log)


class Runner:
    def __init__(self, args: argparse.Namespace, prefix: list[str], ann: Path, images: Path, val: Path) -> None:
        self.args, self.prefix, self.ann, self.images, self.val = args, prefix, ann, images, val
        self.count = 0
        self.weights: Path | None = None

    def _dir(self, tag: str) -> Path:
        self.count += 1
        return self.args.workdir / "runs" / f"{self.count:02d}_{tag}"

    def train(self, mode: str, max_iters: int) -> Job:
        out = self._dir(f"train_{mode}")
        sets = {"train.negatives": "false", "train.max_iters": max_iters, "train.log_every": 1,
                "train.batch_size": BATCH, "train.checkpoint_every": 0}  # fmt: skip
        argv = [*self.prefix, "train", "--annotations", str(self.ann), "--images", str(self.images),
                "--out", str(out), "--config", "cpu_small"]  # fmt: skip
        for k, v in sets.items():
            argv += ["--set", f"{k}={v}"]
        return start(f"train {mode}", argv, out, mode, out / "logs" / "detector.jsonl")

    def predict(self, mode: str) -> Job:
        assert self.weights is not None, "a solo training runs first and provides the model"
        out = self._dir(f"predict_{mode}")
        argv = [*self.prefix, "predict", "--weights", str(self.weights), "--source", str(self.val),
                "--images", str(self.images), "--out", str(out), "--config", "cpu_small", "--no-progress"]  # fmt: skip
        return start(f"predict {mode}", argv, out, mode, None)

    def wait(self, jobs: list[Job], until, cap_s: float) -> None:
        """Poll until ``until(jobs)`` or every job ended, at most ``cap_s`` seconds; stop the rest."""
        t0 = time.perf_counter()
        while True:
            for j in jobs:
                j.poll()
            if until(jobs) or all(j.ended for j in jobs) or time.perf_counter() - t0 > cap_s:
                break
            time.sleep(0.05)
        for j in jobs:
            j.stop()
        for j in jobs:
            if j.proc.returncode not in (0, 130, -signal.SIGINT):
                log = (j.out.parent / f"{j.out.name}.log").read_text()[-2000:]
                raise SystemExit(f"{j.name} failed (exit {j.proc.returncode}):\n{log}")


# ---------------------------------------------------------------- measurements


def timed(job: Job, warmup: int) -> list[float]:
    """Seconds of each of the job's iterations after the warm-up."""
    return [dt for _, dt in job.iters[warmup:]]


def rate_in_window(job: Job, window: tuple[float, float]) -> tuple[float | None, float]:
    """(s/iter, iterations) of a training over a wall-time window: the window's length over the
    iterations done in it, counting an iteration that straddles an edge by the part inside (one
    iteration of a slowed job can be longer than the window)."""
    done = 0.0
    for end, dt in job.iters:
        inside = min(end, window[1]) - max(end - dt, window[0])
        if inside > 0 and dt > 0:
            done += inside / dt
    length = window[1] - window[0]
    return (length / done if done > 0 else None), round(done, 2)


def train_window(jobs: list[Job], warmup: int) -> tuple[float, float]:
    """From when every training had finished its warm-up to when the first one stopped training."""
    begin = max(j.iters[warmup - 1][0] if len(j.iters) >= warmup else j.started for j in jobs)
    end = min(j.iters[-1][0] for j in jobs if j.iters)
    return begin, end


def predict_s_per_image(job: Job) -> tuple[float, float, int]:
    """(s/image, inference seconds, images) from the run's summary.json."""
    s = json.loads((job.out / "summary.json").read_text())
    return s["seconds"] / max(1, s["images"]), s["seconds"], s["images"]


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def case_solo_train(r: Runner, mode: str) -> dict:
    a = r.args
    meter = LoadMeter()
    job = r.train(mode, a.warmup + a.iters)
    r.wait([job], lambda js: False, a.max_window + 120)
    if r.weights is None and (job.out / "model_final.pt").is_file():
        r.weights = job.out / "model_final.pt"
    secs = timed(job, a.warmup)
    return {"s_per_iter": mean(secs), "iters": len(secs), "each": [round(s, 3) for s in secs],
            "load": meter.stop()}  # fmt: skip


def case_solo_predict(r: Runner, mode: str) -> dict:
    meter = LoadMeter()
    job = r.predict(mode)
    r.wait([job], lambda js: False, r.args.max_window + 120)
    spi, secs, n = predict_s_per_image(job)
    return {"s_per_image": spi, "seconds": secs, "images": n, "load": meter.stop()}


def case_two_trains(r: Runner, mode: str) -> dict:
    a = r.args
    meter = LoadMeter()
    jobs = [r.train(mode, a.warmup + a.iters), r.train(mode, a.warmup + a.iters)]
    # Stop when either has done its iterations: the other's remaining ones would run alone.
    r.wait(jobs, lambda js: any(len(j.iters) >= a.warmup + a.iters for j in js), a.max_window + 60)
    window = train_window(jobs, a.warmup)
    per = [rate_in_window(j, window) for j in jobs]
    return {"s_per_iter": [s for s, _ in per], "iters": [n for _, n in per],
            "each": [[round(dt, 3) for _, dt in j.iters] for j in jobs],
            "window_s": round(window[1] - window[0], 1), "load": meter.stop()}  # fmt: skip


def case_train_predict(r: Runner, mode: str) -> dict:
    a = r.args
    meter = LoadMeter()
    train = r.train(mode, 60)  # more than it will do: it is stopped when the prediction ends
    while len(train.iters) < a.warmup and train.proc.poll() is None:
        train.poll()
        time.sleep(0.05)
    pred = r.predict(mode)
    jobs = [train, pred]
    # stop the training when the prediction ends; poll without stopping it first
    t0 = time.perf_counter()
    while pred.proc.poll() is None and time.perf_counter() - t0 < a.max_window + 120:
        train.poll()
        time.sleep(0.05)
    pred.poll()
    r.wait(jobs, lambda js: True, 0)
    spi, secs, n = predict_s_per_image(pred)
    end = pred.ended or time.perf_counter()
    tr, done = rate_in_window(train, (end - secs, end))
    return {"train_s_per_iter": tr, "train_iters": done, "predict_s_per_image": spi,
            "predict_images": n, "window_s": round(secs, 1), "load": meter.stop()}  # fmt: skip


# ---------------------------------------------------------------- data


def dataset(data: Path | None, workdir: Path, images: int) -> tuple[Path, Path, Path]:
    """(train.json, image root, val.json) of a synthetic dataset, generated if needed."""
    if data is not None and (data / "train.json").is_file():
        return data / "train.json", data / "images", data / "val.json"
    out = workdir / f"syn{images}"
    if not (out / "train.json").is_file():
        print(f"generating a synthetic dataset of {images} images in {out}", file=sys.stderr)
        cmd = [PY, "-m", "sniper", "make-dataset", str(out), "--images", str(images), "--quiet"]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out / "train.json", out / "images", out / "val.json"


def val_subset(val: Path, n: int, workdir: Path) -> Path:
    """The first ``n`` images of a COCO file (and their annotations), for a short prediction."""
    d = json.loads(val.read_text())
    d["images"] = d["images"][:n]
    keep = {im["id"] for im in d["images"]}
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] in keep]
    out = workdir / f"val{n}.json"
    out.write_text(json.dumps(d))
    return out


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += [
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    ]
    return "\n".join(out)


def thread_choice() -> dict:
    """What configure_threads chooses here with a clean environment (on a copy: nothing is set)."""
    from sniper.runtime import configure_threads

    s = configure_threads(job_env("new"))
    return {"threads": s.threads, "cores": s.cores, "reason": s.reason, "set_env": s.set_env}


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/syn"), help="a `sniper make-dataset` folder")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sniper_bench_concurrency"))
    ap.add_argument("--images", type=int, default=40, help="images of a generated dataset")
    ap.add_argument("--iters", type=int, default=12, help="timed training iterations per job")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first iterations per training")
    ap.add_argument("--predict-images", type=int, default=6, help="validation images per prediction")
    ap.add_argument("--no-predict", action="store_true", help="trainings only")
    ap.add_argument("--max-window", type=float, default=120.0, help="seconds a concurrent case may run")
    ap.add_argument("--wait-quiet", type=float, default=900.0, help="seconds to wait for an idle machine")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "concurrency.json")
    args = ap.parse_args()
    started = time.perf_counter()
    shutil.rmtree(args.workdir / "runs", ignore_errors=True)  # run folders of an earlier benchmark
    args.workdir.mkdir(parents=True, exist_ok=True)
    ann, images, val = dataset(args.data, args.workdir, args.images)
    val_small = val_subset(val, args.predict_images, args.workdir)
    prefix, how = cli_prefix()
    quiet = wait_until_quiet(args.wait_quiet)
    if quiet["busy_at_start"] >= 0.1:
        print("warning: the machine is still busy; other processes will distort the numbers "
              "(see the other/steal column)", file=sys.stderr)  # fmt: skip
    print(f"start: {how}; machine {quiet['busy_at_start']:.0%} busy, load {quiet['loadavg'][0]:.2f} "
          f"(waited {quiet['waited_s']} s); new mode: {thread_choice()['reason']}", file=sys.stderr)  # fmt: skip

    r = Runner(args, prefix, ann, images, val_small)
    res: dict[str, dict] = {"solo_train": {}, "solo_predict": {}, "two_trains": {}, "train_predict": {}}
    cases = [("solo_train", case_solo_train), ("solo_predict", case_solo_predict),
             ("two_trains", case_two_trains), ("train_predict", case_train_predict)]  # fmt: skip
    for key, case in cases:
        if args.no_predict and "predict" in key:
            continue
        for mode in MODES:  # interleaved, so that a drift in the machine's load hits both modes
            print(f"{key} {mode} ...", file=sys.stderr)
            res[key][mode] = case(r, mode)
            print(f"  {json.dumps({k: v for k, v in res[key][mode].items() if k != 'each'})}", file=sys.stderr)

    rows = []

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    def frac(solo: float | None, conc: float | None) -> str:
        return "-" if solo is None or conc is None else f"{solo / conc:.2f}"

    for mode in MODES:
        solo_t = res["solo_train"][mode]["s_per_iter"]
        two = res["two_trains"][mode]
        for i, s in enumerate(two["s_per_iter"]):
            rows.append([f"2 trainings: train #{i + 1}", mode, fmt(solo_t), fmt(s), frac(solo_t, s),
                         "s/iter", f"{two['load']['other']:.2f}/{two['load']['steal']:.2f}"])  # fmt: skip
        if not args.no_predict:
            solo_p = res["solo_predict"][mode]["s_per_image"]
            tp = res["train_predict"][mode]
            ld = f"{tp['load']['other']:.2f}/{tp['load']['steal']:.2f}"
            rows.append(["train + predict: train", mode, fmt(solo_t), fmt(tp["train_s_per_iter"]),
                         frac(solo_t, tp["train_s_per_iter"]), "s/iter", ld])  # fmt: skip
            rows.append(["train + predict: predict", mode, fmt(solo_p), fmt(tp["predict_s_per_image"]),
                         frac(solo_p, tp["predict_s_per_image"]), "s/image", ld])  # fmt: skip
    results = {
        "machine": {"cpus": os.cpu_count(), "usable_cores": thread_choice()["cores"],
                    "platform": platform.platform(), "quiet_check": quiet},
        "settings": {"iters": args.iters, "warmup": args.warmup, "batch": BATCH, "config": "cpu_small",
                     "predict_images": args.predict_images, "data": str(ann), "launch": how,
                     "modes": {"old": "SNIPER_THREADS=off", "new": thread_choice()}},
        "results": res,
        "table": [dict(zip(["case", "mode", "solo", "concurrent", "fraction_of_solo", "unit", "other_steal"], row))
                  for row in rows],
        "seconds": round(time.perf_counter() - started),
        "loadavg_end": os.getloadavg(),
    }  # fmt: skip
    atomic_write_json(args.out, results)

    solo_rows = [["train alone", m, fmt(res["solo_train"][m]["s_per_iter"]), "s/iter",
                  f"{res['solo_train'][m]['load']['other']:.2f}/{res['solo_train'][m]['load']['steal']:.2f}"]
                 for m in MODES]  # fmt: skip
    if not args.no_predict:
        solo_rows += [["predict alone", m, fmt(res["solo_predict"][m]["s_per_image"]), "s/image",
                       f"{res['solo_predict'][m]['load']['other']:.2f}/{res['solo_predict'][m]['load']['steal']:.2f}"]
                      for m in MODES]  # fmt: skip
    print(f"\n(a) alone (cpu_small, batch {BATCH}, {args.iters} timed iterations after {args.warmup}; "
          f"old = SNIPER_THREADS=off, new = {thread_choice()['reason']})")  # fmt: skip
    print(table(["job", "mode", "time", "unit", "other/steal"], solo_rows))
    print("\n(b, c) two jobs at once: time per unit, and fraction of the same mode's solo speed")
    print(table(["case", "mode", "solo", "concurrent", "fraction of solo", "unit", "other/steal"], rows))
    print(f"\nother/steal: CPU used by other processes / hypervisor steal, fractions of the machine during "
          f"the case. Total {results['seconds']} s; wrote {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
