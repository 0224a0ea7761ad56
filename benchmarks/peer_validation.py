"""Peer validation: the same cell trained by tlbench, by fastai and by scikit-learn.

For each dataset it trains one cell (backbone, weights, resolution, splits, epoch budget:
the settings ``tlbench run`` itself uses, read back from tlbench's own records) three
ways and writes every number to ``results/peer/<device>-<backbone>-<dataset>-<res>px.json``
plus the raw log next to it:

1. **tlbench** ``linear_probe``, ``full``, ``two_stage``: ``tlbench run`` into a temporary
   output directory (a subprocess of this interpreter, so it is the tlbench this script
   imports), with the user's default settings (no ``--lr`` unless ``--lr`` is given here);
   the records' test accuracy and config hash are kept.
2. **fastai** ``Learner.fine_tune(epochs - 1, base_lr, freeze_epochs=1)`` over the same
   tlbench backbone + a fresh Linear head (seeded like tlbench's head), a splitter
   separating backbone and head, fastai's defaults otherwise (Adam, wd 0.01, one-cycle,
   ``train_bn=True``: BatchNorm trains in the frozen phase). Inputs are the same uint8
   images adapted once by tlbench's :class:`~tlbench.data.preprocess.BatchAdapter` (resize, 3
   channels, the backbone's mean/std), served by fastai DataLoaders (no PIL).
3. **scikit-learn** L-BFGS logistic regression on the frozen backbone's pooled features
   (eval mode, tlbench's ``compute_prefix`` over every stage: what ``linear_probe``'s head
   sees), C chosen on validation from a log grid, test read once for the chosen C: the
   CLIP paper's linear-probe protocol.

Splits come from tlbench's ``Runner.splits_for`` (tlbench/data/splits.py), so train,
validation and test are the very images tlbench trains and scores on.

    .venv/bin/python benchmarks/peer_validation.py                    # mnist + fashion, 3 seeds
    .venv/bin/python benchmarks/peer_validation.py --datasets mnist --seeds 1
    .venv/bin/tlbench leaderboard                                     # renders the table

Needs the ``peer`` extra (``pip install -e '.[peer]'``: fastai, scikit-learn).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from tlbench import __version__ as tlbench_version
from tlbench.backbones.weights import WeightsChoice
from tlbench.data.preprocess import BatchAdapter
from tlbench.plan.settings import Cell, Settings, parse_seeds
from tlbench.plugins import registry as plugin_registry
from tlbench.run.runner import Runner
from tlbench.store.records import load_records
from tlbench.store.safeio import atomic_write
from tlbench.train.device import resolve_device
from tlbench.train.feature_cache import compute_prefix

SCHEMA = 1
STRATEGIES = ("linear_probe", "full", "two_stage")
C_GRID = [float(c) for c in np.logspace(-3, 3, 13)]  # 1e-3 .. 1e3, half-decade steps
FASTAI_DEFAULT_LR = 2e-3  # fastai's fine_tune default base_lr
log = logging.getLogger("peer")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    hw = resolve_device(args.device)
    for dataset in args.datasets.split(","):
        run_dataset(dataset.strip(), args, hw)
    return 0


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="mnist,fashion", help="comma list")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--seeds", default="3", help="a count (3 -> 0,1,2) or a list (0,5,7)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--output", type=Path, default=Path("results/peer"))
    p.add_argument("--data-dir", default=None, help="passed to tlbench (--data-dir)")
    p.add_argument(
        "--lr", default=None, help="passed to tlbench run as --lr (default: tlbench's own)"
    )
    p.add_argument(
        "--fastai-lr",
        default=str(FASTAI_DEFAULT_LR),
        help="fine_tune's base_lr, or 'find' for lr_find()'s valley suggestion per seed",
    )
    p.add_argument(
        "--standardize",
        action="store_true",
        help="standardize features (train mean/std) before the logistic regression",
    )
    p.add_argument("--max-iter", type=int, default=2000, help="L-BFGS iterations")
    p.add_argument(
        "--tlbench-args", default="", help="extra arguments for tlbench run (one string)"
    )
    p.add_argument(
        "--records",
        type=Path,
        default=None,
        help="read tlbench's cells from this run directory's records.jsonl (e.g. "
        "results/cpu-2core-64px-train2000-e2) instead of running them again",
    )
    args = p.parse_args(argv)
    args.seed_list = parse_seeds(args.seeds)
    return args


# ---- one dataset ----------------------------------------------------------------------
def run_dataset(dataset: str, args: argparse.Namespace, hw) -> dict:
    started = time.perf_counter()
    stem_tmp = args.output / f".{dataset}.log.tmp"
    handler = _log_to(stem_tmp)
    try:
        log.info(
            "peer validation: %s / %s / %s on %s", args.backbone, dataset, args.weights, hw.name
        )
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        tl = run_tlbench(dataset, args, hw)
        timings["tlbench_seconds"] = round(time.perf_counter() - t0, 1)
        config = tl["config"]
        settings = settings_from(config)
        stem = f"{hw.slug}-{args.backbone}-{dataset}-{config['resolution']}px"

        pm = plugin_registry.get_plugin_manager()
        registry = plugin_registry.collect(pm)
        runner = Runner(registry, pm.hook, hw, Path(tempfile.mkdtemp()), args.data_dir)
        spec = registry.get("backbones", args.backbone)
        cells = {s: make_cell(args, dataset, s, config, settings) for s in args.seed_list}
        splits = {s: runner.workspace.splits_for(c) for s, c in cells.items()}
        backbone = spec.build(WeightsChoice.parse(args.weights)).to(hw.device)
        adapter = BatchAdapter(config["resolution"], spec.mean, spec.std, hw.device)
        num_classes = registry.get("datasets", dataset).num_classes

        t0 = time.perf_counter()
        probe = run_logreg(backbone, adapter, splits, args)
        timings["logreg_seconds"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        fast = run_fastai(backbone, adapter, splits, num_classes, config, args, hw)
        timings["fastai_seconds"] = round(time.perf_counter() - t0, 1)
        timings["total_seconds"] = round(time.perf_counter() - started, 1)

        first_splits, source = splits[args.seed_list[0]]
        result = {
            "schema": SCHEMA,
            "dataset": dataset,
            "backbone": args.backbone,
            "weights": args.weights,
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git_commit": _git_commit(),
            "settings": {
                "train_size": config["train_size"],
                "val_size": config["val_size"],
                "test_size": config["test_size"],
                "split_sizes": first_splits.sizes(),
                "epochs": config["epochs"],
                "batch_size": config["batch_size"],
                "resolution": config["resolution"],
                "seeds": args.seed_list,
                "device": hw.name,
                "threads": torch.get_num_threads(),
                "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
                "data_source": source,
                "split_fingerprints": {str(s): fingerprint(sp) for s, (sp, _src) in splits.items()},
            },
            "versions": versions(),
            "timings": timings,
            "tlbench": tl,
            "logreg": probe,
            "fastai": fast,
        }
        path = args.output / f"{stem}.json"
        atomic_write(path, json.dumps(result, indent=1, sort_keys=True) + "\n")
        log.info("wrote %s (%.0f s)", path, timings["total_seconds"])
        log.info("%s", summary_line(result))
        return result
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        if "stem" in locals():
            os.replace(stem_tmp, args.output / f"{stem}.log")


def settings_from(config: dict) -> Settings:
    """tlbench's Settings as its own record states them (so the peers match exactly)."""
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings(**{k: v for k, v in config.items() if k in names})


def make_cell(args, dataset: str, seed: int, config: dict, settings: Settings) -> Cell:
    return Cell(
        backbone=args.backbone,
        strategy="linear_probe",
        dataset=dataset,
        seed=seed,
        weights=config.get("weights", args.weights),
        resolution=config["resolution"],
        threshold=config.get("threshold", 95.0),
        settings=settings,
    )


# ---- 1. tlbench ----------------------------------------------------------------------
def run_tlbench(dataset: str, args: argparse.Namespace, hw) -> dict:
    if args.records is not None:
        records = [
            r
            for r in load_records(args.records)
            if r.get("dataset") == dataset
            and r.get("backbone") == args.backbone
            and r.get("weights") == args.weights
            and r.get("seed") in args.seed_list
            and r.get("device") == hw.name
        ]
        return tlbench_summary(dataset, records, f"records under {args.records}/ (tlbench run)")
    with tempfile.TemporaryDirectory(prefix="peer-tlbench-") as tmp:
        command = [
            sys.executable, "-m", "tlbench", "run",
            "--backbones", args.backbone,
            "--strategies", ",".join(STRATEGIES),
            "--datasets", dataset,
            "--weights", args.weights,
            "--seeds", seeds_argument(args.seed_list),
            "--no-reference",
            "--device", args.device,
            "--output", tmp,
            "--benchmarks", os.path.join(tmp, "BENCHMARKS.md"),
        ]  # fmt: skip
        if args.lr is not None:
            command += ["--lr", str(args.lr)]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        command += shlex.split(args.tlbench_args)
        log.info("$ %s", " ".join(shlex.quote(c) for c in command))
        env = {**os.environ, "COLUMNS": "120", "TERM": "dumb"}
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        for line in (proc.stdout + proc.stderr).splitlines():
            log.info("tlbench| %s", line)
        if proc.returncode != 0:
            raise SystemExit(f"tlbench run failed (exit {proc.returncode}); see the log")
        files = glob.glob(os.path.join(tmp, "*", "records.jsonl"))
        records = [r for f in files for r in load_records(Path(f).parent)]
    return tlbench_summary(dataset, records, " ".join(shlex.quote(c) for c in command))


def tlbench_summary(dataset: str, records: list, command: str) -> dict:
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        raise SystemExit(f"tlbench recorded no successful cell for {dataset}")
    out: dict = {"command": command, "strategies": {}}
    for name in STRATEGIES:
        mine = sorted((r for r in ok if r["strategy"] == name), key=lambda r: r["seed"])
        out["strategies"][name] = {
            "seeds": [r["seed"] for r in mine],
            "test_accuracy": [r["final_accuracy"] for r in mine],
            "best_val_accuracy": [r.get("best_val_accuracy") for r in mine],
            "config_hash": [r["config_hash"] for r in mine],
            "wall_seconds": [r.get("wall_seconds") for r in mine],
            "curve": [r.get("curve") for r in mine],
            "lr": [_lr_info(r) for r in mine],
        }
    out["config"] = ok[0]["config"]
    out["split_sizes"] = ok[0].get("split_sizes")
    out["data_source"] = ok[0].get("data_source")
    out["versions"] = ok[0].get("versions")
    return out


def seeds_argument(seeds: list[int]) -> str:
    """tlbench's --seeds text for exactly these seeds ("3" would mean 0,1,2)."""
    if seeds == list(range(len(seeds))):
        return str(len(seeds))
    return ",".join(str(s) for s in seeds) + ("," if len(seeds) == 1 else "")


def _lr_info(record: dict) -> dict:
    """Every LR-related field of a record (the configured one and any chosen on val)."""
    found = {k: v for k, v in record.items() if "lr" in k.lower() and not isinstance(v, list)}
    found["config_lr"] = record["config"].get("lr")
    return found


# ---- 2. scikit-learn logistic-regression probe ---------------------------------------
def features(backbone, adapter, images: torch.Tensor) -> np.ndarray:
    """Pooled features of the whole backbone in eval mode (what linear_probe's head sees)."""
    n = len(backbone.stages)
    out = compute_prefix(backbone, n, images, adapter, 128, torch.device("cpu"), False)
    return out.float().numpy()


def run_logreg(backbone, adapter, splits: dict, args: argparse.Namespace) -> dict:
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    cache: dict[tuple, np.ndarray] = {}

    def feats(t: torch.Tensor) -> np.ndarray:
        key = (t.data_ptr(), tuple(t.shape))
        if key not in cache:
            cache[key] = features(backbone, adapter, t)
        return cache[key]

    per_seed: list[dict] = []
    done: dict[str, dict] = {}  # split fingerprint -> result: L-BFGS is deterministic
    for seed, (sp, _source) in splits.items():
        key = json.dumps(fingerprint(sp), sort_keys=True)
        if key in done:
            per_seed.append({**done[key], "seed": seed, "same_split_as_seed": done[key]["seed"]})
            log.info("logreg seed %d: same splits as seed %d, same result", seed, done[key]["seed"])
            continue
        xtr, xva, xte = (feats(t) for t in (sp.train_images, sp.val_images, sp.test_images))
        ytr, yva, yte = (t.cpu().numpy() for t in (sp.train_labels, sp.val_labels, sp.test_labels))
        if args.standardize:
            scaler = StandardScaler().fit(xtr)
            xtr, xva, xte = (scaler.transform(x) for x in (xtr, xva, xte))
        grid, best = [], None
        # one BLAS thread: next to torch's OpenMP pool, 2 threads ran ~30x slower here
        # (7.7 s vs 0.24 s per 100 L-BFGS iterations on 2 cores)
        with threadpool_limits(limits=1):
            for c in C_GRID:
                best = _fit_one(c, xtr, ytr, xva, yva, seed, args, grid, best)
        val, chosen, clf = best
        test = 100.0 * float((clf.predict(xte) == yte).mean())  # test read once
        log.info(
            "logreg seed %d: chosen C=%.3g (val %.2f%%) -> test %.2f%%", seed, chosen, val, test
        )
        done[key] = {
            "seed": seed,
            "grid": grid,
            "chosen_C": chosen,
            "val_accuracy": val,
            "test_accuracy": test,
        }
        per_seed.append(done[key])
    return {
        "solver": "lbfgs",
        "standardize": bool(args.standardize),
        "max_iter": args.max_iter,
        "C_grid": C_GRID,
        "selection": "highest validation accuracy, ties to the smaller C; test once; seeds "
        "whose splits are identical share one fit (L-BFGS is deterministic)",
        "features": "pooled output of every backbone stage, eval mode (BatchNorm running "
        "statistics), fp32, tlbench.train.feature_cache.compute_prefix",
        "per_seed": per_seed,
        "seeds": [r["seed"] for r in per_seed],
        "test_accuracy": [r["test_accuracy"] for r in per_seed],
    }


def _fit_one(c, xtr, ytr, xva, yva, seed, args, grid: list, best):
    """Fit one C, append its validation accuracy to ``grid``; the best (val, C, model)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=args.max_iter, random_state=seed)
        clf.fit(xtr, ytr)
    val = 100.0 * float((clf.predict(xva) == yva).mean())
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    grid.append(
        {
            "C": c,
            "val_accuracy": val,
            "n_iter": int(np.max(clf.n_iter_)),
            "converged": converged,
        }
    )
    if best is None or val > best[0]:  # ties: the smaller C (more regularized)
        best = (val, c, clf)
    log.info(
        "logreg seed %d C=%.3g val %.2f%% (%d iter%s)",
        seed,
        c,
        val,
        grid[-1]["n_iter"],
        "" if converged else ", not converged",
    )
    return best


# ---- 3. fastai fine_tune ---------------------------------------------------------------
def adapted(adapter, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """All images resized and normalized once (fastai then serves float tensors)."""
    with torch.no_grad():
        return torch.cat([adapter(images[i : i + batch]) for i in range(0, len(images), batch)])


def run_fastai(
    backbone, adapter, splits: dict, num_classes: int, config: dict, args: argparse.Namespace, hw
) -> dict:
    import copy

    import fastai
    import fastai.callback.schedule  # noqa: F401 - adds fine_tune/lr_find to Learner
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner, Recorder
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.torch_core import params, set_seed

    class EpochLog(Callback):
        order = Recorder.order + 1  # after the Recorder has written this epoch's values

        def __init__(self):
            self.rows: list[dict] = []

        def after_epoch(self):
            train_loss, valid_loss, acc = self.learn.recorder.values[-1][:3]
            frozen = any(not p.requires_grad for p in self.learn.model.stages.parameters())
            self.rows.append(
                {
                    "epoch": len(self.rows) + 1,
                    "phase": "frozen" if frozen else "unfrozen",
                    "train_loss": float(train_loss),
                    "valid_loss": float(valid_loss),
                    "val_accuracy": 100.0 * float(acc),
                }
            )
            log.info(
                "fastai epoch %d (%s): train loss %.4f, val loss %.4f, val acc %.2f%%",
                *(
                    self.rows[-1][k]
                    for k in ("epoch", "phase", "train_loss", "valid_loss", "val_accuracy")
                ),
            )

    epochs, bs = int(config["epochs"]), int(config["batch_size"])
    per_seed = []
    for seed, (sp, _source) in splits.items():
        started = time.perf_counter()
        xtr, xva, xte = (
            adapted(adapter, t) for t in (sp.train_images, sp.val_images, sp.test_images)
        )
        train_ds = list(zip(xtr, sp.train_labels, strict=True))
        valid_ds = list(zip(xva, sp.val_labels, strict=True))
        set_seed(seed, reproducible=True)
        model = copy.deepcopy(backbone)
        torch.manual_seed(seed)  # tlbench seeds its head the same way (Workspace.model_for)
        model.set_head(num_classes)
        model.to(hw.device)
        if hw.channels_last:  # speed only on the CPU: same arithmetic, NHWC kernels
            model.to(memory_format=torch.channels_last)
        dls = DataLoaders(
            # fastai's own factories: shuffle + drop_last for train, neither for valid
            DataLoader(train_ds, bs=bs, shuffle=True, drop_last=True, num_workers=0),
            DataLoader(valid_ds, bs=2 * bs, shuffle=False, num_workers=0),
            device=hw.device,
        )
        epoch_log = EpochLog()
        learn = Learner(
            dls,
            model,
            loss_func=CrossEntropyLossFlat(),
            metrics=accuracy,
            splitter=lambda m: [params(m.stages), params(m.head)],
            cbs=[epoch_log],
        )
        lr_find = None
        quiet = learn.no_bar() if hasattr(learn, "no_bar") else contextlib.nullcontext()
        with quiet, learn.no_logging():
            if args.fastai_lr == "find":
                learn.freeze()
                suggestion = learn.lr_find(show_plot=False)
                lr_find = float(suggestion.valley)
                base_lr = lr_find
                learn.recorder.values = []
                epoch_log.rows.clear()
            else:
                base_lr = float(args.fastai_lr)
            learn.fine_tune(epochs - 1, base_lr=base_lr, freeze_epochs=1)
        test = evaluate(learn.model, xte, sp.test_labels, 2 * bs)
        seconds = time.perf_counter() - started
        log.info(
            "fastai seed %d: base_lr %.3g -> test %.2f%% (%.0f s)", seed, base_lr, test, seconds
        )
        per_seed.append(
            {
                "seed": seed,
                "base_lr": base_lr,
                "lr_find_valley": lr_find,
                "epochs": epoch_log.rows,
                "test_accuracy": test,
                "seconds": round(seconds, 1),
            }
        )
    return {
        "recipe": f"Learner.fine_tune({epochs - 1}, base_lr, freeze_epochs=1)",
        "fastai_version": fastai.__version__,
        "base_lr": sorted({r["base_lr"] for r in per_seed}),
        "lr_find": args.fastai_lr == "find",
        "defaults": "Adam (fastai: moms 0.95/0.85/0.95, wd 0.01 decoupled), one-cycle "
        "(frozen: pct_start 0.99; unfrozen: base_lr/2, slice(base_lr/200, base_lr/2), "
        "pct_start 0.3, div 5), freeze() keeps BatchNorm trainable (train_bn=True, batch "
        "statistics), train batches shuffled with drop_last",
        "head": "Linear(num_features, classes), torch.manual_seed(seed) before creation",
        "per_seed": per_seed,
        "seeds": [r["seed"] for r in per_seed],
        "test_accuracy": [r["test_accuracy"] for r in per_seed],
    }


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        pred = model(x[i : i + batch]).argmax(1)
        correct += int((pred == y[i : i + batch].to(pred.device)).sum())
    return 100.0 * correct / len(x)


# ---- bookkeeping -----------------------------------------------------------------------
def fingerprint(splits) -> dict:
    """sha256 (16 hex) of each split's image and label bytes: the same images, checkable."""
    out = {}
    for name in ("train", "val", "test"):
        h = hashlib.sha256()
        for t in (getattr(splits, f"{name}_images"), getattr(splits, f"{name}_labels")):
            h.update(t.cpu().contiguous().numpy().tobytes())
        out[name] = h.hexdigest()[:16]
    return out


def versions() -> dict:
    import fastai
    import sklearn
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "tlbench": tlbench_version,
        "fastai": fastai.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
    }


def _git_commit() -> Optional[str]:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def summary_line(result: dict) -> str:
    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    parts = [
        f"logreg {mean(result['logreg']['test_accuracy']):.2f}",
        f"fastai {mean(result['fastai']['test_accuracy']):.2f}",
    ]
    for name, row in result["tlbench"]["strategies"].items():
        parts.append(f"tlbench {name} {mean(row['test_accuracy']):.2f}")
    return f"{result['dataset']}: " + ", ".join(parts) + " (test %, mean over seeds)"


def _log_to(path: Path) -> logging.Handler:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(
        isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        for h in root.handlers
    ):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        root.addHandler(console)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    return handler


if __name__ == "__main__":
    sys.exit(main())
