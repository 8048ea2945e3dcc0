"""Two CPU processes (gloo on loopback) observe different data: every rank must end with identical
qparams, equal to one process observing the concatenated batches."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 4


def make_observers():
    import qat.observers as Q

    return {
        "minmax": Q.MinMaxObserver(0, 255),
        "moving_average": Q.MovingAverageMinMaxObserver(-128, 127, symmetric=True, averaging_constant=0.3),
        "per_channel": Q.PerChannelMinMaxObserver(-128, 127, axis=1),
        "per_channel_moving_average": Q.PerChannelMinMaxObserver(0, 255, axis=1, averaging_constant=0.2),
        "histogram_percentile": Q.PercentileObserver(0, 255, percentile=99.0, bins=256),
        "histogram_entropy": Q.EntropyObserver(-128, 127, bins=256),
        "mse": Q.MSEObserver(-8, 7, axis=1, num_candidates=20),
        "fused": Q.MovingAverageFakeQuantize(0, 255, averaging_constant=0.25),
    }


def rank_batch(step, rank, world):
    """Rank `rank`'s share of step `step`'s global batch (ranks see different ranges)."""
    g = torch.Generator().manual_seed(1000 + step)
    full = torch.randn(world * 6, 8, generator=g) * torch.linspace(0.5, 4, 8) + step
    full[0, 3] = 40.0 + step  # outliers only rank 0 / only the last rank sees
    full[-1, 5] = -50.0 - step
    return full[rank * 6:(rank + 1) * 6] if rank is not None else full


def observe(observers, batch):
    outputs = {}
    for name, obs in observers.items():
        out = obs(batch)
        if name == "fused":
            outputs[name] = out
    return outputs


def qparams(observers):
    return {name: [t.clone() for t in obs.calculate_qparams()] for name, obs in observers.items()}


def worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        observers = make_observers()
        for step in range(STEPS):
            observe(observers, rank_batch(step, rank, world))
        torch.save(qparams(observers), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        # Both ranks finish before either tears down: a rank that destroys its group while
        # the other still talks to it can abort (std::terminate in a gloo thread).
        dist.barrier()
        dist.destroy_process_group()


def test_two_ranks_equal_one_process_on_concatenated_batches(tmp_path):
    world = 2
    init_file = tmp_path / "init"
    mp.spawn(worker, args=(world, str(init_file), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    single = make_observers()
    for step in range(STEPS):
        observe(single, rank_batch(step, None, world))
    expected = qparams(single)

    # The test can fail: rank 0's data alone gives other qparams for every observer.
    alone = make_observers()
    for step in range(STEPS):
        observe(alone, rank_batch(step, 0, world))
    for name, (scale, zero_point) in qparams(alone).items():
        assert not (torch.equal(scale, expected[name][0]) and torch.equal(zero_point, expected[name][1])), name

    for name, (scale, zero_point) in expected.items():
        for r, result in enumerate(results):
            got_scale, got_zero_point = result[name]
            assert torch.equal(got_scale, scale), (name, r, got_scale, scale)
            assert torch.equal(got_zero_point, zero_point), (name, r)
