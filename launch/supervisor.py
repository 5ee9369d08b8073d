"""`acerl run` (and `launch/all.sh`): one node's run. It resolves the recipe into one config per
component, starts the judge, the learner and N generators as processes of their own, and watches
over them.

Each component binds a free port itself (port `*`) and announces the address it bound in a ready
file; the supervisor then confirms over the protocol that it answers (a generator: that the
learner's dispatcher lists it as connected). A generator or the judge that dies is restarted and
the run goes on; if the learner dies, everything stops with the reason and how to continue.
Ctrl-C or SIGTERM stops everything, process groups included, so that nothing of the run is left.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from generator.config import GeneratorConfig
from launch.component import Component
from launch.placement import Plan, plan_recipe, visible_gpus
from launch.prepare import prepare
from launch.recipe import Recipe, load_recipe
from proto.config import ConfigError, dump, load, parse_command_line, replace
from proto.control import Heartbeat, Status, StatusRequest
from proto.judge import StatsRequest
from proto.ready import read_ready
from proto.sockets import Client, SocketLimits

ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True)
ANY_LOCAL_PORT = "tcp://127.0.0.1:*"


def local_address(bound: str) -> str:
    """How a process on this machine reaches a server bound to `bound` (0.0.0.0 or * -> loopback)."""
    scheme, _, rest = bound.partition("://")
    host, _, port = rest.rpartition(":")
    return f"{scheme}://127.0.0.1:{port}" if host in ("0.0.0.0", "*", "[::]") else bound


def answers(address: str, message: Any) -> Any:
    """The reply of the server at `address`, or None if it does not answer within a second."""
    try:
        with Client(address, limits=SocketLimits(recv_timeout_ms=1_000, send_timeout_ms=1_000)) as client:
            return client.request(message)
    except (TimeoutError, OSError):
        return None


def learner_launcher(ranks: int) -> list[str]:
    """How the learner's processes start: itself for one rank, torchrun for more (one per GPU;
    gloo on the CPU, NCCL on GPUs: learner/training/engine.py picks the backend)."""
    if ranks == 1:
        return [sys.executable, "-m", "learner"]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        f"--nproc-per-node={ranks}", "-m", "learner",
    ]  # fmt: skip


class Supervisor:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        *,
        resume: bool,
        max_steps: int | None,
        gpus: int | None = None,
        evaluate: list[str] | None = None,
        judge_address: str | None = None,
    ) -> None:
        """`evaluate`: run `python -m learner eval` with these arguments in the learner's place
        (`acerl eval`); `judge_address`: use the judge running there instead of starting one."""
        self.recipe = recipe
        self.external_judge = judge_address
        self.run_dir = run_dir
        self.resume = resume
        self.max_steps = max_steps
        self.stopping = False
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.logs = run_dir / "logs"
        ready = run_dir / "ready"
        py = sys.executable
        r = recipe
        # Addresses the recipe names are kept (to serve other machines); otherwise free local ports.
        judge_cfg = r.judge if "bind" in r.judge.model_fields_set else replace(r.judge, bind=ANY_LOCAL_PORT)
        dispatch, publish = r.learner.dispatch, r.learner.publish
        if "address" not in dispatch.model_fields_set:
            dispatch = replace(dispatch, address=ANY_LOCAL_PORT)
        if publish.address is None:
            publish = replace(publish, address=ANY_LOCAL_PORT)
        if r.generator.weight_transfer == "broadcast":
            publish = replace(publish, broadcast=True)  # this node's generators join its broadcast
        learner_cfg = replace(r.learner, run_dir=run_dir, dispatch=dispatch, publish=publish)
        self.judge = Component(
            "judge",
            [py, "-m", "judge", "serve", "--config", str(run_dir / "judge.yaml")],
            self.logs / "judge.log",
            judge_cfg,
            ready / "judge.json",
        )
        self.judge.argv += ["--ready-file", str(self.judge.ready_file)]
        if judge_address is not None:
            self.judge.address = judge_address
        learner_argv = [*learner_launcher(r.learner.ranks), "run", "--config", str(run_dir / "learner.yaml")]
        if evaluate is not None:
            learner_argv = [py, "-m", "learner", "eval", "--config", str(run_dir / "learner.yaml"), *evaluate]
        learner_argv += ["--ready-file", str(ready / "learner.json")]
        if resume:
            learner_argv.append("--resume")
        if max_steps is not None:
            learner_argv += ["--max-steps", str(max_steps)]
        self.learner = Component(
            "learner",
            learner_argv,
            self.logs / "learner.log",
            learner_cfg,
            ready / "learner.json",
        )
        self.generators = [
            Component(
                f"generator{index}",
                [py, "-m", "generator", "--config", str(run_dir / f"generator{index}.yaml")],
                self.logs / f"generator{index}.log",
                address=f"gen{index}",  # its id at the dispatcher
            )
            for index in range(r.generators)
        ]
        self.components = [self.judge, self.learner, *self.generators]
        # the plan decides where each goes; what it lists is exactly what starts
        self.plan = plan_recipe(recipe, gpus, evaluating=evaluate is not None)
        for component, placed in zip(self.components, self.plan.components, strict=True):
            assert component.name == placed.name, (component.name, placed.name)
            component.env = placed.env
            placed.command = component.argv
        self.joining: dict[str, float] = {}  # generators started but not yet connected: their deadlines

    def generator_config(self, component: Component) -> GeneratorConfig:
        """A generator's config, once the judge and the learner have announced their addresses."""
        settings = self.recipe.generator.model_dump()
        return GeneratorConfig.model_validate(
            dict(
                settings,
                generator_id=component.address,
                learner=local_address(self.learner.address),
                judge=local_address(self.judge.address),
                model=self.recipe.learner.model.path,
            )
        )

    def write_configs(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for component in (self.judge, self.learner):
            assert component.config is not None
            (self.run_dir / f"{component.name}.yaml").write_text(dump(component.config))
        # only what the recipe set: a resumed run binds free ports again where it named none
        (self.run_dir / "recipe.yaml").write_text(dump(self.recipe, only_set=True))

    def describe(self) -> str:
        """Every resolved config and the command each component starts with (`--dry-run`)."""
        parts = []
        for component in self.components:
            if component.config is not None:
                text = dump(component.config)
            else:
                text = (
                    f"# filled in at start: generator_id={component.address}, "
                    f"model={self.recipe.learner.model.path},\n"
                    "# learner and judge: the addresses the learner and the judge announce once bound\n"
                    + dump(self.recipe.generator)
                )
            parts.append(f"# {component.name}: {' '.join(component.argv)}\n{text}")
        return "\n".join(parts)

    # -- running --------------------------------------------------------------------------------

    def write_components(self) -> None:
        table = [
            {
                "name": c.name,
                "pid": c.process.pid if c.process else None,
                "address": c.address,
                "restarts": c.restarts,
                "running": c.exit_code is None and c.process is not None,
                "log": str(c.log),
            }
            for c in self.components
        ]
        tmp = self.run_dir / "components.json.tmp"
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(self.run_dir / "components.json")

    def wait_ready(
        self, component: Component, check: Callable[[], bool], others: list[Component] | None = None
    ) -> None:
        """Wait until `check()`; any of `component` and `others` exiting first is a failed start."""
        deadline = time.monotonic() + self.recipe.ready_timeout_s
        while time.monotonic() < deadline and not self.stopping:
            # Exits are read before the check: one that comes up and dies between the two is the
            # watch loop's to restart, not a failed start.
            exited = [c for c in (component, *(others or [])) if c.exit_code is not None]
            if check():
                return
            if component is not self.learner and self.learner.exit_code is not None:
                # the learner (or `acerl eval`'s evaluation) ended first: a short evaluation can be
                # done, and its generators told to stop, before they are seen joining; watch()
                # reads its exit code
                return
            if exited:
                dead = exited[0]
                raise RuntimeError(
                    f"{dead.name} exited with code {dead.exit_code} while starting:\n{dead.log_tail()}"
                )
            time.sleep(0.5)
        if not self.stopping:
            raise TimeoutError(
                f"{component.name} did not report ready within {self.recipe.ready_timeout_s:.0f} s "
                f"(log: {component.log}):\n{component.log_tail()}"
            )

    def announced(self, component: Component, key: str, probe: Any) -> bool:
        """Has `component` written its ready file, and does it answer `probe` there?"""
        ready = read_ready(component.ready_file) if component.ready_file else None
        if ready is None:
            return False
        component.address = ready[key]
        return answers(local_address(component.address), probe) is not None

    def connected_generators(self) -> set[str]:
        status = answers(local_address(self.learner.address), StatusRequest())
        return set(status.generators) if isinstance(status, Status) else set()

    def start_generator(self, component: Component) -> None:
        path = self.run_dir / f"{component.name}.yaml"
        path.write_text(dump(self.generator_config(component)))
        component.start(self.env)
        self.joining[component.name] = time.monotonic() + self.recipe.ready_timeout_s

    def start_all(self) -> None:
        if self.external_judge is not None:
            if answers(self.external_judge, StatsRequest()) is None:
                raise RuntimeError(f"no judge answers at {self.external_judge}")
            console.print(f"using the judge at {self.external_judge}")
        else:
            self.judge.start(self.env)
            self.write_components()
            self.wait_ready(self.judge, lambda: self.announced(self.judge, "address", StatsRequest()))
            console.print(f"judge ready at {self.judge.address}")
            # generators keep this address: a restarted judge binds the same port again
            self.judge.argv.append(f"bind={self.judge.address}")
        self.learner.start(self.env)
        self.write_components()
        beat = Heartbeat(sender="supervisor", role="client", time=0.0)
        self.wait_ready(self.learner, lambda: self.announced(self.learner, "dispatch", beat))
        console.print(f"learner ready; its dispatcher at {self.learner.address}")
        for generator in self.generators:
            self.start_generator(generator)
        self.write_components()
        if not self.generators:
            console.print("no generators on this node: the learner waits for those of other machines")
            return
        # The first generator to connect proves the settings; a failure before it is a failed start.
        # The others join while the run goes on, so one that dies then is restarted, not fatal.
        first = self.generators[0]
        self.wait_ready(first, lambda: self.joined() > 0, others=self.generators[1:])

    def joined(self) -> int:
        """How many of the generators still joining connected since the last call; says so for each."""
        if not self.joining:
            return 0
        connected = self.connected_generators()
        ready = [g for g in self.generators if g.name in self.joining and g.address in connected]
        for generator in ready:
            del self.joining[generator.name]
            console.print(f"{generator.name} ready")
        return len(ready)

    def watch_joining(self) -> None:
        """Generators that have not connected yet: ready, restarted, or out of time."""
        self.joined()
        now = time.monotonic()
        for generator in self.generators:
            deadline = self.joining.get(generator.name)
            if deadline is not None and now > deadline and generator.exit_code is None:
                raise TimeoutError(
                    f"{generator.name} did not report ready within {self.recipe.ready_timeout_s:.0f} s "
                    f"(log: {generator.log}):\n{generator.log_tail()}"
                )

    def watch(self, shown: Callable[[], Any] | None = None) -> int:
        """Restart what dies until the learner exits; its exit code. `shown()` is the live line
        (default: the training's progress from metrics.jsonl)."""
        metrics = self.run_dir / "metrics.jsonl"
        shown = shown or (lambda: progress_line(metrics))
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while not self.stopping:
                code = self.learner.exit_code
                if code is not None:
                    return code
                for component in (self.judge, *self.generators):
                    if component.exit_code is not None:
                        self.restart(component)
                self.watch_joining()
                live.update(shown())
                time.sleep(0.5)
        return 130

    def restart(self, component: Component) -> None:
        reason = f"exit code {component.exit_code}"
        component.stop(grace_s=0)  # its children (an engine process, say) may have outlived it
        if component.restarts >= self.recipe.max_restarts:
            raise RuntimeError(
                f"{component.name} died {component.restarts + 1} times (last: {reason}):\n"
                f"{component.log_tail()}"
            )
        component.restarts += 1
        console.print(f"[yellow]{component.name} died ({reason}); restart {component.restarts}[/]")
        if component in self.generators:
            self.start_generator(component)
        else:
            component.start(self.env)
        self.write_components()

    def stop_all(self) -> None:
        for component in [*self.generators, self.learner, self.judge]:
            component.stop(grace_s=15.0)
        self.write_components()

    def how_to_continue(self) -> str:
        """Which checkpoint a resume would start from, and the command."""
        from learner.training.checkpoint import find_latest

        latest = find_latest(self.recipe.learner.checkpoint.dir or self.run_dir / "checkpoints")
        where = "from the start (no checkpoint yet)"
        if latest is not None:
            where = f"from checkpoint {latest.name}"
        return f"to continue {where}: launch/all.sh --resume {self.run_dir}"


def progress_line(metrics: Path) -> str:
    from learner.metrics import EvalRecord, TrainRecord, preferred_rounds, read_records

    records = read_records(metrics) if metrics.exists() else []
    train = [r for r in records if isinstance(r, TrainRecord)]
    if not train:
        return "waiting for the first step"
    r = train[-1]
    shown = preferred_rounds([e for e in records if isinstance(e, EvalRecord)])
    heldout = {e.set_name or e.task: e.accuracy for e in shown}
    accuracy = r.sampled_accuracy if r.sampled_accuracy is not None else r.accuracy
    return (
        f"step {r.step:>4}  stage {r.stage_name}  reward {r.reward_mean:.3f}  acc {accuracy:.3f}  "
        f"len {r.response_len_mean:.0f}  entropy {r.entropy or 0:.3f}  step {r.step_s or 0:.1f}s "
        f"wait {r.wait_s or 0:.1f}s  "
        + "  ".join(f"held-out {task} {accuracy:.3f}" for task, accuracy in sorted(heldout.items()))
    )


def plan_table(plan: Plan) -> Table:
    where = f"{plan.gpus} GPUs of {plan.gpu_memory_gb:.0f} GB" if plan.gpus else "CPU only"
    table = Table(
        title=f"placement: {where}",
        title_justify="left",
        caption="\n".join(plan.memory_lines()),
        caption_justify="left",
    )
    for column in ("component", "GPUs", "CUDA_VISIBLE_DEVICES", "ranks", "memory (est.)", "runs"):
        table.add_column(column, overflow="fold")
    for row in plan.rows():
        table.add_row(*row)
    return table


def build_parser(prog: str = "acerl run") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train on one node: the judge, the generators and the learner, each a process of "
        "its own, supervised. With no arguments it builds and trains the tiny default.",
        epilog="Overrides are dotted paths into the recipe, e.g. learner.optim.lr=1e-6 generators=2 "
        "learner.schedule.stages.0.steps=5; see `acerl learner run --help` and the recipe files for fields.",
    )
    parser.add_argument("--recipe", type=Path, default=ROOT / "launch/recipes/tiny.yaml", help="recipe YAML")
    parser.add_argument("--run-dir", type=Path, help="default: runs/<time>")
    parser.add_argument("--generators", type=int, help="generator processes (the recipe's `generators`)")
    parser.add_argument("--max-steps", type=int, help="stop after this many learner steps in total")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="write <run-dir>/plan.json, print the plan and every resolved config; start nothing",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        help="GPUs of the node to plan for (default: those visible); with --dry-run "
        "any number, to plan for a node you are not on",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the recipe")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    overrides = list(args.overrides)
    if args.generators is not None:
        overrides.append(f"generators={args.generators}")
    try:
        if args.resume is not None:
            run_dir = args.resume
            recipe = load(Recipe, run_dir / "recipe.yaml", overrides)
        else:
            recipe = load_recipe(args.recipe, overrides)
            run_dir = args.run_dir or ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S")
        run_dir = run_dir.resolve()
        if args.gpus is not None and not args.dry_run and args.gpus > len(visible_gpus()):
            raise ConfigError(f"--gpus {args.gpus}: this node has {len(visible_gpus())} visible GPUs")
        timings = {}
        if recipe.prepare != "none" and not args.dry_run:  # the plan reads the model it builds
            timings[f"building prepare: {recipe.prepare} (0 when cached)"] = prepare(recipe, console)
        supervisor = Supervisor(
            recipe, run_dir, resume=args.resume is not None, max_steps=args.max_steps, gpus=args.gpus
        )
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    supervisor.plan.write(run_dir / "plan.json")
    console.print(plan_table(supervisor.plan))
    if args.dry_run:
        print(supervisor.describe())
        console.print(f"plan: {run_dir / 'plan.json'} (nothing started)")
        return 0
    supervisor.write_configs()

    def on_signal(signum: int, frame: Any) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    console.print(f"run directory: {run_dir}")
    started = time.perf_counter()
    code = 1
    try:
        supervisor.start_all()
        timings["starting the components"] = time.perf_counter() - started
        code = supervisor.watch()
        timings["the run, start-up included"] = time.perf_counter() - started
        if code == 0:
            console.print(f"[green]run finished[/] in {time.perf_counter() - started:.0f} s")
        elif code == 130:
            console.print(f"[yellow]stopped[/]; {supervisor.how_to_continue()}")
        else:
            console.print(
                f"[red]the learner died[/] (exit code {code}); the judge and the generators are stopped.\n"
                f"{supervisor.how_to_continue()}\n"
                f"the learner's last log lines ({supervisor.learner.log}):\n{supervisor.learner.log_tail()}"
            )
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]run stopped:[/] {exc}\n{supervisor.how_to_continue()}")
        code = 1
    finally:
        supervisor.stop_all()
    if code == 0:
        from learner.report import write_report

        report = write_report(run_dir, timings)
        console.print(f"report: {report}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
