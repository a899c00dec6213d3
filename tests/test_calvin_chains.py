"""CALVIN long-horizon protocol: chain scoring on recorded outcomes with known answers, the chain rollout on a small
deterministic env with CALVIN's interface, the sequences file, and the ``calvin`` env spec without calvin_env."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videoaction.envs.spec import get_env_spec, make_env
from videoaction.errors import VideoActionError
from videoaction.eval.calvin_chains import (Chain, ChainError, evaluate_chains, load_sequences, run_chain,
                                            score_chains)

T, F = True, False


def test_score_known_answer():
    # completed in a row: 5, 2, 0, 3 (entries after a failure are ignored), 1
    outcomes = [[T, T, T, T, T], [T, T, F], [F], [T, T, T, F, T], [T, F]]
    s = score_chains(outcomes)
    assert s["completed"] == [5, 2, 0, 3, 1]
    assert s["success_1"] == pytest.approx(4 / 5)
    assert s["success_2"] == pytest.approx(3 / 5)
    assert s["success_3"] == pytest.approx(2 / 5)
    assert s["success_4"] == pytest.approx(1 / 5)
    assert s["success_5"] == pytest.approx(1 / 5)
    assert s["avg_len"] == pytest.approx(11 / 5)
    # Avg. Len equals the sum of the success rates (a property of the protocol)
    assert s["avg_len"] == pytest.approx(sum(s[f"success_{k}"] for k in range(1, 6)))


def test_score_refuses_bad_records():
    with pytest.raises(ChainError):
        score_chains([])
    with pytest.raises(ChainError, match="at most 5"):
        score_chains([[T] * 6])
    with pytest.raises(ChainError, match="booleans"):
        score_chains([[1, 0]])


# --- a small deterministic env with CALVIN's chain interface ------------------------------------------------------
TASKS = {"open_drawer": 0, "push_red": 1, "turn_on_led": 2, "lift_block": 3, "rotate_left": 4, "close_drawer": 5}
TEXT = {k: f"please {k.replace('_', ' ')}" for k in TASKS}


class ToyCalvin:
    """Scene = a counter per task. A step with an action whose argmax is a task's index (and value > 0.5) advances
    that task's counter; a task is done when its counter reached ``hold`` since the subtask's start info. Initial
    states set the counters; the oracle compares start and current info as CALVIN's does."""

    def __init__(self, hold: int = 3):
        self.hold = hold
        self.counts = np.zeros(len(TASKS), dtype=np.int64)
        self.steps = 0

    def _obs(self):
        return {"image": np.full((4, 4, 3), self.steps % 256, dtype=np.uint8),
                "state": self.counts.astype(np.float32)}

    def reset_to(self, initial_state):
        self.counts = np.array([int(initial_state.get(k, 0)) for k in TASKS])
        return self._obs()

    def step(self, action):
        a = np.asarray(action)
        assert a.shape == (len(TASKS),)
        self.steps += 1
        if a.max() > 0.5:
            self.counts[int(a.argmax())] += 1
        return self._obs(), 0.0, False, self.get_info()

    def get_info(self):
        return {"counts": self.counts.copy()}

    def get_task_info_for_set(self, start_info, current_info, tasks):
        return {t for t in tasks if current_info["counts"][TASKS[t]] - start_info["counts"][TASKS[t]] >= self.hold}

    def instruction(self, task):
        return TEXT[task]


class OraclePolicy:
    """Outputs the instructed task's target action as chunks of ``n_action_steps``; ``fail_on`` instructions get a
    no-op instead. Counts calls and resets."""

    n_obs_steps = 1

    def __init__(self, n_action_steps: int = 2, fail_on: tuple[str, ...] = ()):
        self.n_action_steps = n_action_steps
        self.fail_on = {TEXT[t] for t in fail_on}
        self.calls, self.resets, self.seen = 0, 0, []

    def reset(self):
        self.resets += 1

    def __call__(self, obs):
        self.calls += 1
        text = obs["language"][0]
        self.seen.append(text)
        assert obs["image"].shape == (1, 4, 4, 3)
        a = np.zeros((1, self.n_action_steps, len(TASKS)), dtype=np.float32)
        if text not in self.fail_on:
            task = next(k for k, v in TEXT.items() if v == text)
            a[..., TASKS[task]] = 1.0
        return a


CHAIN = Chain({}, ("open_drawer", "push_red", "turn_on_led", "lift_block", "rotate_left"))


def test_rollout_all_succeed():
    env, pol = ToyCalvin(hold=3), OraclePolicy(n_action_steps=2)
    rec = run_chain(env, pol, CHAIN, max_steps=20)
    assert rec["outcome"] == [T] * 5
    assert rec["steps"] == [3] * 5  # the chunk of 2 is cut short when the oracle reports success
    assert pol.resets == 5 and pol.calls == 10
    assert pol.seen[::2] == [TEXT[t] for t in CHAIN.tasks]


def test_rollout_stops_at_first_failure_after_max_steps():
    env, pol = ToyCalvin(hold=3), OraclePolicy(n_action_steps=4, fail_on=("turn_on_led",))
    rec = run_chain(env, pol, CHAIN, max_steps=10)
    assert rec["outcome"] == [T, T, F]
    assert rec["steps"] == [3, 3, 10]  # the failing subtask used its whole step budget, no more
    assert TEXT["lift_block"] not in pol.seen  # nothing after the first failure
    assert env.steps == 16


def test_rollout_budget_too_small_fails():
    # a task needing 3 held steps cannot be done in 2
    rec = run_chain(ToyCalvin(hold=3), OraclePolicy(), CHAIN, max_steps=2)
    assert rec == {"outcome": [F], "steps": [2]}


def test_success_is_relative_to_the_subtask_start():
    # the initial state already has open_drawer's counter high; only progress since the subtask's start counts
    env, pol = ToyCalvin(hold=3), OraclePolicy(fail_on=("open_drawer",))
    rec = run_chain(env, pol, Chain({"open_drawer": 10}, CHAIN.tasks), max_steps=6)
    assert rec["outcome"] == [F]


def test_evaluate_chains_scores_and_resumes(tmp_path):
    chains = [CHAIN, Chain({}, ("push_red", "close_drawer", "turn_on_led", "open_drawer", "lift_block")),
              Chain({}, ("turn_on_led", "lift_block", "push_red", "rotate_left", "open_drawer"))]
    pol = OraclePolicy(fail_on=("turn_on_led",))
    out = tmp_path / "calvin.json"
    first = evaluate_chains(ToyCalvin(), pol, chains[:2], out=out, max_steps=8, progress=False)
    assert first["completed"] == [2, 2]
    calls = pol.calls
    res = evaluate_chains(ToyCalvin(), pol, chains, out=out, max_steps=8, progress=False)
    assert res["completed"] == [2, 2, 0]
    assert res["success_1"] == pytest.approx(2 / 3) and res["success_3"] == 0.0
    assert res["avg_len"] == pytest.approx(4 / 3)
    assert pol.calls - calls == 4  # only the third chain ran again (8 steps of 2-action chunks)
    saved = json.loads(out.read_text())
    assert saved["score"]["avg_len"] == pytest.approx(4 / 3) and len(saved["chains"]) == 3
    with pytest.raises(ChainError, match="recorded for tasks"):
        evaluate_chains(ToyCalvin(), pol, chains[::-1], out=out, progress=False)


def test_sequences_file(tmp_path):
    p = tmp_path / "seqs.json"
    state = {"led": 0, "lightbulb": 1, "slider": "right", "drawer": "closed", "red_block": "table",
             "blue_block": "slider_right", "pink_block": "table", "grasped": 0}
    p.write_text(json.dumps([{"initial_state": state, "tasks": list(CHAIN.tasks)}] * 3))
    chains = load_sequences(p, n=2)
    assert len(chains) == 2 and chains[0].tasks == CHAIN.tasks and chains[0].initial_state["slider"] == "right"
    with pytest.raises(ChainError, match="3"):
        load_sequences(p, n=4)
    p.write_text(json.dumps([{"initial_state": state, "tasks": ["open_drawer"] * 4}]))
    with pytest.raises(ChainError, match="chain 0"):
        load_sequences(p)


def test_calvin_env_spec_explains_install():
    spec = get_env_spec("calvin")
    assert spec.max_steps == 360 and spec.observation.image_keys == ("image", "wrist_image")
    try:
        import calvin_env  # noqa: F401
    except ImportError:
        with pytest.raises(VideoActionError, match="git clone.*calvin"):
            make_env("calvin", dataset_path="/nonexistent", calvin_root="/nonexistent")
    else:
        pytest.skip("calvin_env is installed here")


def test_cli_checks_the_sequences_then_explains_the_install(tmp_path):
    from videoaction.eval.calvin_chains import main

    seqs = tmp_path / "seqs.json"
    seqs.write_text(json.dumps([{"initial_state": {}, "tasks": list(CHAIN.tasks)}]))
    args = ["--checkpoint", str(tmp_path), "--dataset-path", str(tmp_path), "--calvin-root", str(tmp_path),
            "--sequences", str(seqs), "--out", str(tmp_path / "r.json")]
    with pytest.raises(ChainError, match="2 chains asked for"):
        main(args + ["--n", "2"])
    try:
        import calvin_env  # noqa: F401
    except ImportError:
        with pytest.raises(VideoActionError, match="pip install -e calvin/calvin_env"):
            main(args)
