"""Make the 1-D toy's base model (backend mlp): an MLP, xavier-initialised, optionally pretrained on a signal.

    python -m tools.pretrain_toy models/toy-mixed --pretrain mixed        # the reference's mixture recipe
    python -m tools.pretrain_toy models/toy-xavier --pretrain none        # initialisation only

The reference's recipe (sunrainyg/RandOpt simple_1D_signals_expts/pretrain.py): Adam at lr 1e-3, 1000 steps,
each a batch of 256 fresh windows of the signal, loss the MSE of the next value after the context. Windows
come from the pretraining stream of randopt_hpc.signals (stream 1, rows step·batch .. step·batch + batch - 1),
never from the task's (stream 0), so no test curve is seen in pretraining whatever the seeds.

Deterministic: the same arguments give a bitwise identical model.safetensors on one machine and torch build
(torch.manual_seed before the init, one CPU thread, data a pure function of the seed). config.json's meta
records every argument and the final training loss.
"""
from __future__ import annotations

import sys
import time

from randopt_hpc import signals
from randopt_hpc.cli import ArgParser, integer, new_folder, number

MAX_PARAMS = 10**8         # --ctx/--width/--depth: the MLP's float32 weights and Adam state stay under ~2 GB
MAX_WINDOW_VALUES = 10**8  # --batch x (--ctx + 1): one step's windows, float64, under ~1 GB


def pretrain(out: str, pretrain: str = "none", *, seed: int = 0, ctx: int = 10, steps: int = 1000, batch: int = 256,
             lr: float = 1e-3, width: int = 128, depth: int = 5, log=print) -> dict:
    """Build, train and save the model in `out`; returns the meta written to its config.json."""
    import torch

    from randopt_hpc.backends.mlp import MLP, save_mlp

    if pretrain != "none":
        signals.check_name(pretrain)
    for name, v, lo in (("seed", seed, 0), ("ctx", ctx, 1), ("steps", steps, 0), ("batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"--{name} must be an integer >= {lo}, got {v!r}")
    if not lr > 0:
        raise ValueError(f"--lr must be > 0, got {lr!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # one thread: the same sums in the same order on any machine
    try:
        torch.manual_seed(seed)
        model = MLP(ctx, width, depth)
        model.init_weights()
        loss = None
        trained = 0 if pretrain == "none" else steps
        t0 = time.perf_counter()
        if trained:
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            for step in range(trained):
                context, future = signals.windows(pretrain, batch, seed, ctx, 1, start=step * batch,
                                                  stream=signals.PRETRAIN_STREAM)
                x = torch.from_numpy(context).to(torch.float32)
                y = torch.from_numpy(future[:, 0]).to(torch.float32)
                opt.zero_grad()
                err = torch.nn.functional.mse_loss(model(x), y)
                err.backward()
                opt.step()
                loss = float(err.detach())
                if step % 100 == 0 or step == trained - 1:
                    log(f"step {step + 1}/{trained}: loss {loss:.6f}")
        meta = {"pretrain": pretrain, "seed": seed, "ctx": ctx, "steps": steps, "trained_steps": trained,
                "batch": batch, "lr": lr, "width": width, "depth": depth, "res_x": signals.RES_X, "x0": signals.X0,
                "init": "xavier_uniform weights, zero biases", "final_loss": loss}
        save_mlp(out, model, meta)
        log(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters) in "
            f"{time.perf_counter() - t0:.2f} s")
        return meta
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m tools.pretrain_toy", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=new_folder, help="the model folder to write")
    p.add_argument("--pretrain", required=True,
                   help=f"none (xavier init only) or a signal: {', '.join(signals.NAMES)}")
    p.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    p.add_argument("--ctx", type=integer(1, 1 << 20), default=10)
    p.add_argument("--steps", type=integer(0, 10**7), default=1000)
    p.add_argument("--batch", type=integer(1, 10**7), default=256)
    p.add_argument("--lr", type=number(0, 10, lo_open=True), default=1e-3)
    p.add_argument("--width", type=integer(1, 1 << 20), default=128)
    p.add_argument("--depth", type=integer(2, 1 << 20), default=5)
    a = p.parse_args(argv)
    if a.pretrain != "none":
        try:
            signals.check_name(a.pretrain)
        except ValueError as e:
            p.error(f"--pretrain: {e}")
    params = a.ctx * a.width + (a.depth - 2) * a.width * (a.width + 1) + 2 * a.width + 1
    if params > MAX_PARAMS:
        p.error(f"--ctx {a.ctx}, --width {a.width}, --depth {a.depth}: {params:,} parameters, more than "
                f"{MAX_PARAMS:,}")
    if a.pretrain != "none" and a.batch * (a.ctx + 1) > MAX_WINDOW_VALUES:
        p.error(f"--batch {a.batch} x (--ctx {a.ctx} + 1) values per step, more than {MAX_WINDOW_VALUES:,}")
    try:
        pretrain(a.out, a.pretrain, seed=a.seed, ctx=a.ctx, steps=a.steps, batch=a.batch, lr=a.lr, width=a.width,
                 depth=a.depth)
    except ValueError as e:
        print(f"pretrain_toy: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
