"""CALVIN's long-horizon protocol (ABC -> D): chains of 5 instructions, stop at the first failure.

Protocol (CALVIN's ``evaluate_policy.py``, as VPP, MDT and GR-1 report it): 1000 chains, each an initial scene state
and 5 subtasks; the scene is reset only at the start of a chain; every subtask gets its language instruction and at
most 360 env steps; CALVIN's task oracle checks after every step whether the subtask was done (relative to the info
at the subtask's start); the chain stops at the first failed subtask. Metrics: the success rate of completing the
first k subtasks in a row (k = 1..5) and **Avg. Len**, the mean number of consecutive completed subtasks (0..5).

Scoring is a pure function over recorded outcomes (:func:`score_chains`); :func:`run_chain` /
:func:`evaluate_chains` roll a policy through chains on any env with CALVIN's interface (:class:`ChainEnv`; the
real one is :class:`videoaction.envs.calvin.CalvinChainEnv`).

Sequences file (:func:`load_sequences`): the chains come from CALVIN's own ``get_sequences`` (fixed numpy seeds),
which needs CALVIN installed; export them once with::

    from calvin_agent.evaluation.multistep_sequences import get_sequences
    import json
    json.dump([{"initial_state": s, "tasks": list(t)} for s, t in get_sequences(1000)], open("seqs.json", "w"))

i.e. a JSON list of ``{"initial_state": {name: value, ...}, "tasks": [5 task names]}`` (``initial_state`` as CALVIN
writes it: ``led``, ``lightbulb``, ``slider``, ``drawer``, ``red_block``, ``blue_block``, ``pink_block``,
``grasped``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from videoaction.errors import VideoActionError

CHAIN_LENGTH = 5
MAX_SUBTASK_STEPS = 360


class ChainError(VideoActionError):
    """A malformed sequences file, outcome record or env answer in the CALVIN chain protocol."""


class ChainEnv(Protocol):
    """What the chain rollout needs from an environment (CALVIN's interface, one instance, reused across chains)."""

    def reset_to(self, initial_state: Mapping[str, Any]) -> Mapping[str, np.ndarray]: ...  # obs

    def step(self, action: np.ndarray) -> tuple[Mapping[str, np.ndarray], float, bool, Mapping[str, Any]]: ...

    def get_info(self) -> Mapping[str, Any]: ...

    def get_task_info_for_set(self, start_info: Mapping[str, Any], current_info: Mapping[str, Any],
                              tasks: set[str]) -> set[str]: ...  # the tasks of ``tasks`` done since start_info

    def instruction(self, task: str) -> str: ...


@dataclass(frozen=True)
class Chain:
    initial_state: Mapping[str, Any]
    tasks: tuple[str, ...]


def load_sequences(path, n: int | None = None) -> list[Chain]:
    """Read a sequences file (format in the module docstring); ``n``: the first n chains."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ChainError(f"{path}: cannot read the CALVIN sequences file ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, list) or not raw:
        raise ChainError(f"{path}: expected a non-empty JSON list of {{'initial_state': {{...}}, 'tasks': [...]}}")
    chains = []
    for i, item in enumerate(raw):
        state = item.get("initial_state") if isinstance(item, dict) else None
        tasks = item.get("tasks") if isinstance(item, dict) else None
        if not isinstance(state, dict) or not isinstance(tasks, list) or len(tasks) != CHAIN_LENGTH \
                or not all(isinstance(t, str) and t for t in tasks):
            raise ChainError(f"{path}: chain {i} must be {{'initial_state': {{...}}, 'tasks': [{CHAIN_LENGTH} task "
                             f"names]}}, found {str(item)[:200]}")
        chains.append(Chain(dict(state), tuple(tasks)))
    if n is not None:
        if n > len(chains):
            raise ChainError(f"{path}: {n} chains asked for, the file has {len(chains)}")
        chains = chains[:n]
    return chains


def completed_in_a_row(outcome: Sequence[bool]) -> int:
    """Number of leading successes of one chain's per-subtask outcomes (anything after a failure is ignored)."""
    if len(outcome) > CHAIN_LENGTH:
        raise ChainError(f"a chain has at most {CHAIN_LENGTH} subtasks, found an outcome of {len(outcome)}")
    n = 0
    for ok in outcome:
        if not isinstance(ok, (bool, np.bool_)):
            raise ChainError(f"subtask outcomes must be booleans, found {ok!r}")
        if not ok:
            break
        n += 1
    return n


def score_chains(outcomes: Sequence[Sequence[bool]]) -> dict:
    """Recorded outcomes (one list of per-subtask booleans per chain) -> ``{"n_chains", "success_1".."success_5",
    "avg_len", "completed"}``: ``success_k`` = fraction of chains whose first k subtasks all succeeded, ``avg_len`` =
    mean consecutive successes."""
    if not outcomes:
        raise ChainError("no chain outcomes to score")
    done = np.array([completed_in_a_row(o) for o in outcomes])
    out = {"n_chains": len(done)}
    for k in range(1, CHAIN_LENGTH + 1):
        out[f"success_{k}"] = float(np.mean(done >= k))
    out["avg_len"] = float(done.mean())
    out["completed"] = done.tolist()
    return out


def _obs_history(history: list, n_obs_steps: int, instruction: str) -> dict:
    """The last ``n_obs_steps`` observations (the first repeated at a subtask's start) -> batched ``(1, T, ...)``."""
    last = history[-n_obs_steps:]
    last = [last[0]] * (n_obs_steps - len(last)) + last
    out = {k: np.stack([h[k] for h in last])[None] for k in last[0]}
    out["language"] = [instruction]
    return out


def run_chain(env: ChainEnv, policy: Any, chain: Chain, max_steps: int = MAX_SUBTASK_STEPS,
              predict_kwargs: Mapping[str, Any] | None = None, adapter=None) -> dict:
    """Roll ``policy`` (a videoaction Policy or a callable ``obs -> actions``, see
    :class:`~videoaction.eval.adapter.PolicyAdapter`) through one chain; every predicted chunk is executed open-loop
    (stopping early when the subtask is done). Returns ``{"outcome": [bool, ...], "steps": [int, ...]}`` with one
    entry per attempted subtask (the last is the first failure, if any)."""
    from videoaction.eval.adapter import PolicyAdapter

    adapter = adapter or PolicyAdapter(policy, predict_kwargs)
    obs = env.reset_to(chain.initial_state)
    outcome, steps = [], []
    for task in chain.tasks:
        if hasattr(policy, "reset"):
            policy.reset()
        text = env.instruction(task)
        start_info = env.get_info()
        history: list = [obs]
        success, t = False, 0
        while t < max_steps and not success:
            actions = adapter.act(_obs_history(history, adapter.n_obs_steps, text))[0]  # (n, A)
            for action in actions:
                obs, _, _, info = env.step(np.asarray(action, dtype=np.float32))
                t += 1
                done = env.get_task_info_for_set(start_info, info, {task})
                if task in done:
                    success = True
                    break
                if t >= max_steps:
                    break
                history.append(obs)  # executed open-loop; the history stays current for the next chunk
                del history[:-max(adapter.n_obs_steps, 1)]
        outcome.append(success)
        steps.append(t)
        if not success:
            break
    return {"outcome": outcome, "steps": steps}


def evaluate_chains(env: ChainEnv, policy: Any, chains: Sequence[Chain], out: str | Path | None = None,
                    max_steps: int = MAX_SUBTASK_STEPS, predict_kwargs: Mapping[str, Any] | None = None,
                    progress: bool = True, on_chain: Callable[[int, dict], None] | None = None) -> dict:
    """Run every chain and score them. With ``out`` (a JSON file) the per-chain records are written after every chain
    and a rerun resumes after the chains already recorded (refusing a file recorded for other chains)."""
    from tqdm import tqdm

    from videoaction.eval.adapter import PolicyAdapter
    from videoaction.utils.io import atomic_write_json

    records: list[dict] = []
    path = Path(out) if out else None
    if path is not None and path.exists():
        prev = json.loads(path.read_text())
        records = list(prev.get("chains", []))
        for i, r in enumerate(records):
            if i >= len(chains) or r.get("tasks") != list(chains[i].tasks):
                raise ChainError(f"{path}: chain {i} was recorded for tasks {r.get('tasks')}, not the sequences "
                                 "given now; use another output file")
    adapter = PolicyAdapter(policy, predict_kwargs)
    bar = tqdm(range(len(records), len(chains)), desc="CALVIN chains", disable=not progress)
    for i in bar:
        rec = run_chain(env, policy, chains[i], max_steps=max_steps, adapter=adapter)
        rec["tasks"] = list(chains[i].tasks)
        records.append(rec)
        score = score_chains([r["outcome"] for r in records])
        bar.set_postfix(avg_len=f"{score['avg_len']:.2f}")
        if on_chain is not None:
            on_chain(i, rec)
        if path is not None:
            atomic_write_json(path, {"chains": records, "score": {k: v for k, v in score.items() if k != "completed"},
                                     "max_steps": max_steps})
    result = score_chains([r["outcome"] for r in records])
    result["chains"] = records
    return result


def format_score(score: Mapping[str, Any]) -> str:
    """One table row as CALVIN papers print it: success 1..5 and Avg. Len."""
    cells = " | ".join(f"{score[f'success_{k}']:.3f}" for k in range(1, CHAIN_LENGTH + 1))
    return f"| {cells} | {score['avg_len']:.2f} |  ({score['n_chains']} chains)"


def main(argv: list[str] | None = None) -> int:
    """``python -m videoaction.eval.calvin_chains --checkpoint RUN --dataset-path task_ABC_D --calvin-root CLONE
    --sequences seqs.json --out calvin.json [--n 1000]``: the ABC->D protocol for a trained policy."""
    import argparse

    from videoaction.envs.spec import make_env
    from videoaction.models.base import load_policy

    ap = argparse.ArgumentParser(prog="python -m videoaction.eval.calvin_chains", description=main.__doc__,
                                 allow_abbrev=False)
    ap.add_argument("--checkpoint", required=True, help="run or checkpoint directory (load_policy)")
    ap.add_argument("--dataset-path", required=True, help="CALVIN task_ABC_D folder (its validation/ scene)")
    ap.add_argument("--calvin-root", required=True, help="the CALVIN clone (calvin_models/conf)")
    ap.add_argument("--sequences", required=True, help="JSON sequences file (module docstring)")
    ap.add_argument("--out", required=True, help="JSON results file (a rerun resumes it)")
    ap.add_argument("--n", type=int, default=None, help="the first N chains (default: all)")
    ap.add_argument("--max-steps", type=int, default=MAX_SUBTASK_STEPS)
    ap.add_argument("--predict", default="{}", help='predict_action keywords as JSON, e.g. \'{"sigma_min": 1.0}\'')
    args = ap.parse_args(argv)
    chains = load_sequences(args.sequences, args.n)
    env = make_env("calvin", dataset_path=args.dataset_path, calvin_root=args.calvin_root)  # explains a missing install
    res = evaluate_chains(env, load_policy(args.checkpoint), chains, out=args.out, max_steps=args.max_steps,
                          predict_kwargs=json.loads(args.predict))
    print("| 1 | 2 | 3 | 4 | 5 | Avg. Len |")
    print(format_score(res))
    return 0


__all__ = ["CHAIN_LENGTH", "Chain", "ChainEnv", "ChainError", "MAX_SUBTASK_STEPS", "completed_in_a_row",
           "evaluate_chains", "format_score", "load_sequences", "main", "run_chain", "score_chains"]


if __name__ == "__main__":
    raise SystemExit(main())
