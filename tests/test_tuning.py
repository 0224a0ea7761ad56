"""Each phase's memory layout: NHWC where only forward passes run, measured otherwise.

Tolerance of the layout-equality test: NCHW and NHWC convolutions sum in different
orders, so after three epochs of Adam the weights agree to ``ATOL`` / ``RTOL`` (the
same bound as the feature-cache equality tests), and predictions agree exactly.
"""

from __future__ import annotations

import time

import pytest
import torch
from helpers.plugins import tiny_staged

import tlbench.train.autotune as tuning
from tlbench.api.specs import Phase
from tlbench.backbones.weights import WeightsChoice
from tlbench.data.preprocess import BatchAdapter
from tlbench.data.sources import find_idx_files, load_idx_dir
from tlbench.data.splits import make_splits
from tlbench.train.autotune import BatchPlan, Tuner
from tlbench.train.feature_cache import FeatureCache
from tlbench.train.loop import CellTrainer
from tlbench.train.phases import set_phase_modes, trainable_groups
from tlbench.train.state import TrainConfig

ATOL, RTOL = 1e-5, 1e-4
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.delenv("TLBENCH_CHANNELS_LAST", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def probe_for(model, first):
    def probe():
        with torch.no_grad():
            x = model.forward_stages(torch.randn(8, 3, 12, 12), 0, first)
        return x, torch.arange(8) % 10

    return probe


def tiny_model(train_from: int):
    torch.manual_seed(0)
    model = tiny_staged(WeightsChoice("random"))
    model.set_head(10)
    stages = list(range(train_from, 3))
    trainable_groups(model, Phase("p", train_stages=stages), stages, 1e-3)
    set_phase_modes(model, stages)
    return model


def never(*_args):
    raise AssertionError("no measurement expected here")


def test_forward_only_phases_and_cuda_take_nhwc_without_measuring(monkeypatch):
    monkeypatch.setattr(tuning, "measure", never)
    model = tiny_model(3)
    choice = Tuner(CPU).layout(model, 3, never, "k")
    assert (choice.channels_last, choice.label()) == (True, "nhwc:forward-only")
    cuda = Tuner(torch.device("cuda")).layout(tiny_model(0), 0, never, "k")
    assert cuda.label() == "nhwc:cuda"
    assert Tuner(CPU, allow_nhwc=False).layout(model, 0, never, "k").label() == "nchw:off"


@pytest.mark.parametrize(("value", "label"), [("0", "nchw:forced"), ("1", "nhwc:forced")])
def test_the_environment_forces_one_layout(monkeypatch, value, label):
    monkeypatch.setattr(tuning, "measure", never)
    monkeypatch.setenv("TLBENCH_CHANNELS_LAST", value)
    assert Tuner(CPU).layout(tiny_model(0), 0, never, "k").label() == label


@pytest.mark.parametrize(
    ("nchw", "nhwc", "expected"), [(100.0, 150.0, True), (470.0, 302.0, False)]
)
def test_the_faster_layout_wins_and_is_measured_once_per_key(monkeypatch, nchw, nhwc, expected):
    calls = []

    def fake_trial(_tail, _x, labels, layout):
        calls.append(layout)
        rate = nhwc if layout == torch.channels_last else nchw
        return lambda: len(labels) / rate  # seconds per step

    monkeypatch.setattr(tuning, "_trial_step", fake_trial)
    chooser, model = Tuner(CPU), tiny_model(1)
    first = chooser.layout(model, 1, probe_for(model, 1), "key")
    again = chooser.layout(model, 1, never, "key")  # remembered: no probe, no trial
    assert first is again and first.channels_last is expected
    assert first.rates == {"nchw": nchw, "nhwc": nhwc} and first.why == "measured"
    assert len(calls) == 2
    chooser.layout(model, 1, probe_for(model, 1), "other key")
    assert len(calls) == 4


def test_a_real_trial_times_both_layouts_and_leaves_the_model_alone():
    model = tiny_model(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads_before = [p.requires_grad for p in model.parameters()]
    choice = Tuner(CPU).layout(model, 1, probe_for(model, 1), "k")
    assert set(choice.rates) == {"nchw", "nhwc"} and min(choice.rates.values()) > 0
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # weights and BN statistics
    assert [p.requires_grad for p in model.parameters()] == grads_before
    assert model.stages[1].training and not model.stages[0].training


def run_cell(synth_dir, phases):
    torch.manual_seed(0)
    model = tiny_staged(WeightsChoice("random"))
    model.set_head(10)
    splits = make_splits(load_idx_dir(find_idx_files(synth_dir), "synth", 10, "test"), 200, 50, 100)
    config = TrainConfig(
        epochs=3, batch_size=32, lr=0.01, evals_per_epoch=2, threshold=95.0, seed=0,
        num_classes=10, cache_key="key",
    )  # fmt: skip
    adapter = BatchAdapter(16, (0.5,) * 3, (0.5,) * 3, CPU)
    trainer = CellTrainer(model, phases, splits, adapter, config, FeatureCache(CPU))
    return trainer, trainer.run()


def test_the_layout_changes_speed_not_results(synth_dir, monkeypatch):
    phases = [
        Phase("head", epoch_fraction=0.5),
        Phase("partial", epoch_fraction=0.5, train_stages=[1, 2], lr_scale=0.1),
    ]
    monkeypatch.setenv("TLBENCH_CHANNELS_LAST", "0")
    nchw, nchw_record = run_cell(synth_dir, phases)
    monkeypatch.setenv("TLBENCH_CHANNELS_LAST", "1")
    nhwc, nhwc_record = run_cell(synth_dir, phases)
    assert nchw_record["memory_format"] == "nchw:forced,nchw:forced"
    assert nhwc_record["memory_format"] == "nhwc:forced,nhwc:forced"
    assert nhwc.model.stages[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    theirs = nhwc.model.state_dict()
    for name, mine in nchw.model.state_dict().items():
        assert torch.allclose(mine, theirs[name], atol=ATOL, rtol=RTOL), name
    for key in ("final_accuracy", "confusion", "curve"):
        assert nchw_record[key] == nhwc_record[key], key


def test_a_cell_records_each_phases_measured_layout(synth_dir):
    _trainer, record = run_cell(synth_dir, [Phase("head"), Phase("all", train_stages=[0, 1, 2])])
    head, full = record["memory_format"].split(",")
    assert head == "nhwc:forward-only" and full.endswith(":measured")
    assert record["memory_format_rates"][0] is None
    assert set(record["memory_format_rates"][1]) == {"nchw", "nhwc"}
    assert record["inference_folded_batchnorm"] is True  # tlbench.train.bn_fold, tests/test_fold.py
    assert record["inference_batch"] == tuning.INFERENCE_TRIAL[0]  # 100 test images: no trial


def covered(plan, total: int) -> list[slice]:
    seen: list[slice] = []
    plan.run(total, seen.append)
    assert [i for s in seen for i in range(total)[s]] == list(range(total))  # once, in order
    return seen


def test_a_fixed_inference_plan_covers_every_item_once():
    sizes = [s.stop - s.start for s in covered(BatchPlan(32), 100)]
    assert sizes == [32, 32, 32, 4]


def test_the_inference_trial_times_real_batches_and_remembers_the_faster(monkeypatch):
    tuner = Tuner(CPU)
    slow_size = {32: 64, 64: 32}
    for slow in (64, 32):
        key = f"net-{slow}"

        def work(index: slice, slow=slow):
            time.sleep(0.002 if index.stop - index.start == slow else 0.0)

        plan = tuner.inference_plan(key, 64)
        seen: list[slice] = []
        plan.run(1000, lambda index, seen=seen, work=work: (seen.append(index), work(index)))
        sizes = [s.stop - s.start for s in seen]
        assert sizes[:4] == list(tuning.INFERENCE_TRIAL) and sum(sizes) == 1000
        assert set(sizes[4:-1]) == {slow_size[slow]}  # the rest of the pass: the faster
        assert tuner.inference_plan(key, 64).size == slow_size[slow]  # remembered
        assert tuner.inference_plan(key, 64).on_choice is None


def test_small_passes_and_cuda_do_not_run_the_trial():
    tuner = Tuner(CPU)
    sizes = [s.stop - s.start for s in covered(tuner.inference_plan("k", 64), 300)]
    assert set(sizes[:-1]) == {tuning.INFERENCE_TRIAL[0]}  # too few images to time
    assert tuner.inference_plan("k", 64).on_choice is not None  # nothing decided yet
    assert Tuner(torch.device("cuda")).inference_plan("k", 64).size == 128


def test_compile_covers_every_stage_and_trial_copies_stay_eager(monkeypatch):
    import torch._dynamo

    from tlbench.train.autotune import eager_copy
    from tlbench.train.phases import compile_stages

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    model = tiny_model(0)
    compile_stages(model)  # lazy: nothing is compiled until a forward pass
    assert torch._dynamo.config.recompile_limit >= len(model.stages) + 1
    assert all(m._compiled_call_impl is not None for m in (*model.stages, model.head))
    copy = eager_copy(model)
    assert all(m._compiled_call_impl is None for m in copy.modules())
    assert model.stages[0]._compiled_call_impl is not None  # the original keeps compiling
