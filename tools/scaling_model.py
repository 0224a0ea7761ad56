"""The paper scaling model of README "Running on a Ray cluster": cells/hour vs GPUs for
the headline command at full protocol, from H100 per-cell rates measured by
``tlbench bench`` (results/bench/cuda-nvidia-h100-80gb-hbm3-*).

    python tools/scaling_model.py
"""

from __future__ import annotations

EPOCHS, TRAIN = 5, 55_000  # CUDA profile: whole train split minus 5,000 validation images
EVAL_SHARE = 1.1  # + validations (4 per epoch on 5,000) and the test pass: assumed 10%
MEASURED = {"resnet18": 2831, "resnet50": 1115}  # end-to-end train img/s, `full`, H100
FILL = 0.3  # a frozen-prefix cache fill, in budgets (efficientnet_lite0 probe on H100)
CELLS = 420  # 7 backbones x 10 strategies x 2 datasets x 3 seeds
GPUS = (1, 2, 4, 8, 16, 32, 64)


def budgets() -> dict[str, float]:
    """Seconds of one training budget per backbone; unmeasured ones assumed (README)."""
    seconds = {k: EPOCHS * TRAIN / rate * EVAL_SHARE for k, rate in MEASURED.items()}
    seconds["vgg16"] = 2 * seconds["resnet50"]
    for small in (
        "efficientnet_b0",
        "efficientnet_lite0",
        "mobilenetv2_100",
        "mobilenetv3_large_100",
    ):
        seconds[small] = seconds["resnet18"]
    return seconds


def units(grouping: str) -> list[float]:
    """Seconds of each unit of work one worker runs start to end."""
    out: list[float] = []
    for budget in budgets().values():
        for _dataset in ("mnist", "fashion"):
            if grouping == "data":  # imagenet group: 8 rows x 4 budgets + the probe; scratch
                out += [budget * (32 + FILL), 4 * budget]
            else:  # one unit per row; partial, two_stage, gradual fill their own caches
                out += [budget * FILL] + [4 * budget] * 9 + [budget * FILL] * 3
    return out


def makespan(work: list[float], gpus: int) -> float:
    loads = [0.0] * gpus
    for unit in sorted(work, reverse=True):  # greedy, largest first, as the executor does
        loads[loads.index(min(loads))] += unit
    return max(loads)


def main() -> None:
    print({k: round(v) for k, v in budgets().items()})
    for grouping in ("data", "row"):
        work = units(grouping)
        print(f"{grouping}: {sum(work) / 3600:.1f} GPU-h, longest unit {max(work) / 3600:.2f} h")
        for gpus in GPUS:
            hours = makespan(work, gpus) / 3600
            print(f"  {gpus:3d} GPUs: {hours:6.2f} h {CELLS / hours:7.1f} cells/h")


if __name__ == "__main__":
    main()
