"""Starts one node's run and watches over it: the judge, the learner and N generators.

`launch/all.sh` calls this. Each component is a separate process with its own log in the run
directory; each is waited for until it reports ready (with a timeout naming what did not come
up). A generator or the judge that dies is restarted and the run goes on; if the learner dies,
everything stops with the reason shown. Ctrl-C or SIGTERM stops everything, process groups
included, so that nothing of the run is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.live import Live

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages come from the checkout

from learner.config import ConfigError, apply_overrides, format_errors  # noqa: E402
from proto.control import Heartbeat  # noqa: E402
from proto.judge import StatsRequest  # noqa: E402
from proto.sockets import Client, SocketLimits  # noqa: E402

console = Console(stderr=True)


class TinyPrepare(BaseModel):
    """Sizes of the tiny default, built once and cached under .cache/."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    hidden: int = 128
    layers: int = 2
    math_prompts: int = Field(default=2000, ge=10)
    code_prompts: int = Field(default=600, ge=10)
    careful_fraction: float = Field(default=0.3, ge=0, le=1)  # worked solutions in the warm start
    warm_start_steps: int = Field(default=300, ge=0)
    warm_start_lr: float = Field(default=3e-3, gt=0)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prepare: Literal["none", "tiny"] = "none"
    tiny: TinyPrepare = TinyPrepare()
    generators: int = Field(default=1, ge=1)
    max_restarts: int = Field(default=5, ge=0)  # per component
    ready_timeout_s: float = Field(default=600.0, gt=0)
    judge: dict[str, Any] = {}  # judge settings (python -m judge serve --config)
    generator: dict[str, Any] = {}  # generator settings, less learner/judge/model (filled in here)
    learner: dict[str, Any]  # the run's settings (learner.run.RunConfig)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_address(bound: str) -> str:
    """How a process on this machine reaches a server bound to `bound` (0.0.0.0 or * -> loopback)."""
    scheme, _, rest = bound.partition("://")
    host, _, port = rest.rpartition(":")
    return f"{scheme}://127.0.0.1:{port}" if host in ("0.0.0.0", "*", "[::]") else bound


def substitute(value: Any, names: dict[str, str]) -> Any:
    """Replace ${NAME} in every string of a nested structure."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    return value


def prepare_tiny(tiny: TinyPrepare) -> dict[str, str]:
    """Build (or reuse) the tiny model, its tasks and its warm start; returns ${...} names."""
    # The builders' source is part of the key: a change to the tasks or the model rebuilds them.
    sources = [ROOT / "learner" / f"{name}.py" for name in ("tiny_model", "tiny_tasks", "warm_start")]
    key = json.dumps(tiny.model_dump(), sort_keys=True) + "".join(p.read_text() for p in sources)
    cache = ROOT / ".cache" / f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    base, tasks, warm = cache / "model", cache / "tasks", cache / "warm_start"
    if not (warm / "config.json").exists():
        from learner.tiny_model import write_tiny_model
        from learner.tiny_tasks import write_tasks
        from learner.warm_start import warm_start

        console.print(f"[bold]tiny default[/]: building model, tasks and warm start in {cache}")
        started = time.perf_counter()
        write_tiny_model(base, seed=tiny.seed, hidden=tiny.hidden, layers=tiny.layers)
        write_tasks(
            tasks,
            tiny.math_prompts,
            tiny.code_prompts,
            seed=tiny.seed,
            careful_fraction=tiny.careful_fraction,
        )
        warm_start(
            base,
            [tasks / "math_train.jsonl", tasks / "code_train.jsonl"],
            warm,
            steps=tiny.warm_start_steps,
            lr=tiny.warm_start_lr,
            seed=tiny.seed,
        )
        console.print(f"tiny default ready in {time.perf_counter() - started:.0f} s")
    return {"TINY_MODEL": str(warm), "TINY_TASKS": str(tasks)}


def kill_session(session: int) -> None:
    """SIGKILL every process of a session (the component's leader started it with setsid)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the fields after the command name: state ppid pgrp session ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    address: str = ""
    restartable: bool = True
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    history: list[str] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        out = self.log.open("ab")
        # A session of its own: stopping the component stops everything it started.
        self.process = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        out.close()
        self.started_at = time.monotonic()

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, grace_s: float) -> None:
        """SIGTERM to its whole process group, SIGKILL after `grace_s`; then SIGKILL to whatever
        of the group is left (children outlive a leader that was killed)."""
        if self.process is None:
            return
        group = self.process.pid  # a session of its own: the group id is the leader's pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        kill_session(group)  # worker pools may put their workers in process groups of their own
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Supervisor:
    def __init__(self, recipe: Recipe, run_dir: Path, *, resume: bool, max_steps: int | None) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.resume = resume
        self.max_steps = max_steps
        self.components: list[Component] = []
        self.stopping = False
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")

    # -- set-up ---------------------------------------------------------------------------------

    def write_configs(self) -> None:
        from generator.config import GeneratorConfig
        from judge.config import JudgeConfig
        from learner.run import RunConfig

        r = self.recipe
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        judge_address = f"tcp://127.0.0.1:{free_port()}"
        learner_cfg = dict(r.learner, run_dir=str(self.run_dir))
        # Addresses the recipe names are kept (to serve other machines); otherwise free local ports.
        dispatch = dict(learner_cfg.get("dispatch", {}))
        dispatch.setdefault("address", f"tcp://127.0.0.1:{free_port()}")
        publish = dict(learner_cfg.get("publish", {}))
        publish.setdefault("address", "tcp://127.0.0.1:*")
        learner_cfg["dispatch"], learner_cfg["publish"] = dispatch, publish
        dispatch_address = local_address(dispatch["address"])
        run_cfg = self._validated("learner", RunConfig, learner_cfg)
        judge_cfg = self._validated("judge", JudgeConfig, r.judge)
        model = str(run_cfg.model.path)
        generator_cfgs = []
        for index in range(r.generators):
            values = dict(
                r.generator,
                learner=dispatch_address,
                judge=judge_address,
                model=model,
                generator_id=f"gen{index}",
            )
            generator_cfgs.append(self._validated("generator", GeneratorConfig, values))
        dump = {"learner": run_cfg.model_dump(mode="json"), "judge": judge_cfg.model_dump(mode="json")}
        (self.run_dir / "learner.yaml").write_text(yaml.safe_dump(dump["learner"], sort_keys=False))
        (self.run_dir / "judge.yaml").write_text(yaml.safe_dump(dump["judge"], sort_keys=False))
        resolved = {
            "recipe": r.model_dump(mode="json"),
            "judge_address": judge_address,
            "dispatch_address": dispatch_address,
        }
        (self.run_dir / "resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        py = sys.executable
        self.judge = Component(
            "judge",
            [
                py,
                "-m",
                "judge",
                "serve",
                "--config",
                str(self.run_dir / "judge.yaml"),
                "--bind",
                judge_address,
            ],
            logs / "judge.log",
            judge_address,
        )
        learner_argv = [py, "-m", "learner", "run", "--config", str(self.run_dir / "learner.yaml")]
        if self.resume:
            learner_argv.append("--resume")
        if self.max_steps is not None:
            learner_argv += ["--max-steps", str(self.max_steps)]
        self.learner = Component(
            "learner", learner_argv, logs / "learner.log", dispatch_address, restartable=False
        )
        self.generators = []
        for index, cfg in enumerate(generator_cfgs):
            path = self.run_dir / f"generator{index}.yaml"
            path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            self.generators.append(
                Component(
                    f"generator{index}",
                    [py, "-m", "generator", "--config", str(path)],
                    logs / f"generator{index}.log",
                    cfg.generator_id,
                )
            )
        self.components = [self.judge, self.learner, *self.generators]

    def _validated(self, section: str, schema: type[BaseModel], values: dict[str, Any]) -> Any:
        try:
            return schema.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(f"recipe section {section}: {format_errors(exc)}") from None

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

    def wait_ready(self, component: Component, check: Any) -> None:
        deadline = time.monotonic() + self.recipe.ready_timeout_s
        while time.monotonic() < deadline and not self.stopping:
            # One that came up and died since (a generator, while the others still start) did not
            # fail to start: the watch loop restarts it like any other. Its exit is read before
            # the check: one that dies between the two is checked again, not failed.
            exited = component.exit_code is not None
            if check():
                return
            if exited:
                raise RuntimeError(
                    f"{component.name} exited with code {component.exit_code} while starting:\n"
                    f"{component.log_tail()}"
                )
            time.sleep(0.5)
        if not self.stopping:
            raise TimeoutError(
                f"{component.name} did not report ready within {self.recipe.ready_timeout_s:.0f} s "
                f"(log: {component.log}):\n{component.log_tail()}"
            )

    @staticmethod
    def answers(address: str, message: Any) -> bool:
        try:
            with Client(address, limits=SocketLimits(recv_timeout_ms=1_000, send_timeout_ms=1_000)) as client:
                client.request(message)
            return True
        except (TimeoutError, OSError):
            return False

    def start_all(self) -> None:
        self.judge.start(self.env)
        self.write_components()
        self.wait_ready(self.judge, lambda: self.answers(self.judge.address, StatsRequest()))
        console.print(f"judge ready at {self.judge.address}")
        self.learner.start(self.env)
        self.write_components()
        beat = Heartbeat(sender="supervisor", role="client", time=0.0)
        self.wait_ready(self.learner, lambda: self.answers(self.learner.address, beat))
        console.print(f"learner ready; its dispatcher at {self.learner.address}")
        for generator in self.generators:
            generator.start(self.env)
        self.write_components()
        for generator in self.generators:
            self.wait_ready(
                generator, lambda g=generator: "learner_connected" in g.log.read_text(errors="replace")
            )
            console.print(f"{generator.name} ready")

    def watch(self) -> int:
        metrics = self.run_dir / "metrics.jsonl"
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while not self.stopping:
                code = self.learner.exit_code
                if code is not None:
                    return code
                for component in (self.judge, *self.generators):
                    if component.exit_code is not None:
                        self.restart(component)
                live.update(progress_line(metrics))
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
        component.start(self.env)
        self.write_components()

    def stop_all(self) -> None:
        for component in [*self.generators, self.learner, self.judge]:
            if component.process is not None:
                component.stop(grace_s=15.0)
        if self.components:
            self.write_components()


def progress_line(metrics: Path) -> str:
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return "waiting for the first step"
    train = [json.loads(line) for line in lines if '"kind": "train"' in line]
    if not train:
        return "waiting for the first step"
    r = {key: (0.0 if value is None else value) for key, value in train[-1].items()}  # null: not measured
    heldout = {}
    for line in lines:
        if '"kind": "eval"' in line and '"k": 1,' not in line:  # the sampled (avg@k) evaluations
            record = json.loads(line)
            heldout[record["task"]] = record["accuracy"]
    return (
        f"step {r['step']:>4}  stage {r.get('stage_name', r.get('stage'))}  reward {r['reward_mean']:.3f}  "
        f"acc {r.get('sampled_accuracy', r['accuracy']):.3f}  len {r['response_len_mean']:.0f}  "
        f"entropy {r.get('entropy', 0):.3f}  step {r.get('step_s', 0):.1f}s wait {r.get('wait_s', 0):.1f}s  "
        + "  ".join(f"held-out {task} {accuracy:.3f}" for task, accuracy in sorted(heldout.items()))
    )


def load_recipe(path: Path, overrides: list[str]) -> Recipe:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"recipe {path}: {exc.strerror}") from None
    data = apply_overrides(data, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"recipe {path}: {format_errors(exc)}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/all.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "launch/recipes/tiny.yaml")
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument("--generators", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the recipe")
    args = parser.parse_args(argv)
    try:
        if args.resume is not None:
            run_dir = args.resume
            recipe = Recipe.model_validate(yaml.safe_load((run_dir / "resolved.yaml").read_text())["recipe"])
        else:
            recipe = load_recipe(args.recipe, args.overrides)
            run_dir = args.run_dir or ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S")
        if args.generators is not None:
            recipe.generators = args.generators
        run_dir = run_dir.resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        prepared = time.perf_counter()
        names = prepare_tiny(recipe.tiny) if recipe.prepare == "tiny" else {}
        timings = {"building the tiny default (0 when cached)": time.perf_counter() - prepared}
        recipe = Recipe.model_validate(substitute(recipe.model_dump(), names))
        supervisor = Supervisor(recipe, run_dir, resume=args.resume is not None, max_steps=args.max_steps)
        supervisor.write_configs()
    except (ConfigError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2

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
            console.print("[yellow]stopped[/]")
        else:
            console.print(f"[red]the learner failed[/] (exit code {code}):\n{supervisor.learner.log_tail()}")
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]run stopped:[/] {exc}")
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
