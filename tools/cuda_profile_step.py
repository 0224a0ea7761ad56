"""One training step of a backbone repeated at one shape, timed and profiled: bf16
autocast, NHWC, fused Adam, batch 256, 224 px, random weights.

    python tools/cuda_profile_step.py resnet50 [--compile]
"""

import sys
import time

import torch
import torch.nn.functional as F

import tlbench.plugins.registry as plugin_registry
from tlbench.backbones.weights import WeightsChoice
from tlbench.train.device import resolve_device

BATCH, STEPS = 256, 20


def main() -> None:
    name, compiled = sys.argv[1], "--compile" in sys.argv[2:]
    resolve_device("cuda")  # the device settings of a cell (TF32, cudnn.benchmark)
    registry = plugin_registry.collect(plugin_registry.get_plugin_manager())
    model = registry.get("backbones", name).build(WeightsChoice("random"))
    model.set_head(10)
    model = model.cuda().train().to(memory_format=torch.channels_last)
    if compiled:
        model.compile()
    opt = torch.optim.Adam(model.parameters(), fused=True)
    x = torch.randn(BATCH, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model.head(model.forward_stages(x)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / STEPS
    print(
        f"{name}{' compiled' if compiled else ''}: pure train step batch {BATCH} 224px bf16 "
        f"NHWC: {seconds * 1e3:.1f} ms = {BATCH / seconds:,.0f} img/s"
    )
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18))


if __name__ == "__main__":
    main()
