"""Measuring a device: time real training steps of the configured model there.

    from tasks.device._probe import probe_device
    candidate = probe_device("cpu", workload, workload.shape(), DeviceConfig(), budget_seconds=1.0)
    candidate.ms_per_step

Each step is the training loop's own (`tasks.nets.steps.train_step`), after a
host-to-device copy of the batch, so the probe times what the run will do.
"""

from __future__ import annotations

import time
import warnings

import torch

from schemas.device import Candidate, DeviceConfig, InputShape, ProbeWorkload
from schemas.errors import first_line
from tasks.nets.networks import build_network
from tasks.nets.optim import build_loss, build_optimizer
from tasks.nets.steps import grad_scaler, synchronize, train_step, training_memory_format

WARMUP_STEPS = 2


def warm_process() -> None:
    """Pay torch's one-time lazy imports (the first optimizer imports torch._dynamo, which takes seconds)
    before timing: the run pays them anyway when it builds its optimizer, so they are not the probe's cost."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def probe_device(
    device: str, workload: ProbeWorkload, shape: InputShape, config: DeviceConfig, budget_seconds: float
) -> Candidate:
    """Time training steps of the workload's model on `device`, the way the real loop runs them."""
    started = time.perf_counter()
    torch_device = torch.device(device)
    if torch_device.type == "cpu":
        rng = torch.random.fork_rng(devices=[])
    else:
        rng = torch.random.fork_rng(devices=[torch_device.index or 0], device_type=torch_device.type)
    try:
        # The run's random streams (init, dropout) stay untouched, and the measuring steps say nothing: what is
        # wrong with them (a loss that does not fit the task, say) the run reports itself, once.
        with rng, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ms, steps = _time_steps(torch_device, workload, shape, config, budget_seconds, started)
    except Exception as exc:  # a device that cannot run the model loses; it never ends the run
        return Candidate(
            device=device, ms_per_step=None, steps=0, probe_seconds=time.perf_counter() - started,
            error=f"probe failed: {first_line(exc)}",
        )
    return Candidate(device=device, ms_per_step=ms, steps=steps, probe_seconds=time.perf_counter() - started)


def _time_steps(
    torch_device: torch.device, workload: ProbeWorkload, shape: InputShape, config: DeviceConfig,
    budget_seconds: float, started: float,
) -> tuple[float, int]:
    """(ms per step, steps timed): warm-up steps, then timed ones until `config.probe_steps` or the budget."""
    precision = config.precision
    torch.manual_seed(workload.seed)
    model = build_network(workload.model, shape).to(torch_device)  # type: ignore[arg-type]
    model.to(memory_format=training_memory_format(model, torch_device))  # as train_model trains it
    generator = torch.Generator().manual_seed(workload.seed)
    X = torch.randn((workload.batch_size, shape.n_features), generator=generator)  # flat rows, as the data stage gives
    if shape.task == "classification":
        y = torch.randint(0, shape.n_outputs, (workload.batch_size,), generator=generator)
    else:
        y = torch.randn((workload.batch_size,), generator=generator)
    loss_fn = build_loss(workload.loss, shape.task).to(torch_device)
    optimizer = build_optimizer(workload.optimizer, model.parameters())
    scaler = grad_scaler(torch_device, precision)
    if torch_device.type == "cuda":
        X, y = X.pin_memory(), y.pin_memory()
    model.train()

    def step() -> None:  # the batch is copied each step, as the loop's per-batch path does
        xb = X.to(torch_device, non_blocking=True)
        yb = y.to(torch_device, non_blocking=True)
        train_step(model, loss_fn, optimizer, xb, yb, torch_device, precision, scaler)

    for _ in range(WARMUP_STEPS):
        step()
    synchronize(torch_device)
    timed_start = time.perf_counter()
    steps = 0
    while steps < config.probe_steps:
        step()
        steps += 1
        if time.perf_counter() - started >= budget_seconds:
            break
    synchronize(torch_device)
    return (time.perf_counter() - timed_start) / steps * 1000, steps
