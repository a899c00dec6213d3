"""PushT on gym-pusht 0.1.8: dict observations, PushT-M (per-episode goal), visual variants, the T geometry the env,
its metrics and the scripted expert share, and the ``pusht`` / ``pusht-m`` :class:`~videoaction.envs.spec.EnvSpec`.

Observations: ``image`` uint8 (H, W, 3) rendered by the env, ``state`` float32 (5,) = agent xy, block xy, angle.
The standard low-dim observation is ``state[:2]`` = ``agent_pos`` (Diffusion Policy's image task); block pose is
privileged. ``info`` has ``is_success`` and ``coverage`` (relative to the episode's goal); the reward is
``clip(coverage / 0.95, 0, 1)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gym_pusht.envs.pusht import PushTEnv

from videoaction.envs.spec import EnvSpec, MetricSpec, ObservationProtocol, register_env
from videoaction.errors import VideoActionError

VARIANTS = ("bg-color", "bg-objects", "goal-color")  # "distractors" = "bg-objects"
SUCCESS_THRESHOLD = 0.95  # coverage above which an episode succeeds (gym-pusht's success_threshold)
GOAL_POSE = (256.0, 256.0, math.pi / 4)  # the fixed PushT goal (x, y, angle)

# ------------------------------------------------------------------------------------------------ T geometry
# T outline in block-local coordinates (the body origin; gym-pusht's add_tee with scale 30, length 4).
T_BAR = [(-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (-60.0, 30.0)]
T_STEM = [(-15.0, 30.0), (-15.0, 120.0), (15.0, 120.0), (15.0, 30.0)]
T_OUTLINE = np.array([(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)],
                     dtype=np.float64)  # (8, 2) outline corners, in order
# The 9 keypoints recorded in datasets: the 8 T corners (gym-pusht order) + the centre of gravity (0, 45).
LOCAL_KEYPOINTS9 = np.array(T_BAR + T_STEM + [(0.0, 45.0)], dtype=np.float64)  # (9, 2)


def rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def to_world(local: np.ndarray, pose) -> np.ndarray:
    """(N, 2) block-local points -> world, for pose (x, y, theta) of the body origin."""
    return np.asarray(local, dtype=np.float64) @ rot(pose[2]).T + np.asarray(pose[:2], dtype=np.float64)


def tee_polygons(pose: Sequence[float], buffer: float = 0.0):
    """The T's two rectangles at ``pose`` = (x, y, angle) as a shapely MultiPolygon (optionally buffered)."""
    import shapely.geometry as sg

    geom = sg.MultiPolygon([sg.Polygon(to_world(np.array(v), pose)) for v in (T_BAR, T_STEM)])
    return geom.buffer(buffer) if buffer else geom


def coverage(block_pose: Sequence[float], goal_pose: Sequence[float] = GOAL_POSE) -> float:
    """area(block ∩ goal) / area(goal) for block / goal poses (x, y, angle) — gym-pusht's own formula."""
    goal = tee_polygons(goal_pose)
    return float(goal.intersection(tee_polygons(block_pose)).area / goal.area)


def coverage_reward(cov, threshold: float = SUCCESS_THRESHOLD):
    """PushT per-step reward ``clip(coverage / 0.95, 0, 1)`` (array-friendly)."""
    return np.clip(np.asarray(cov, dtype=np.float64) / threshold, 0.0, 1.0)


def dp_score(max_coverages: Iterable[float], threshold: float = SUCCESS_THRESHOLD) -> float:
    """Diffusion Policy score: mean over episodes of max-over-steps clip(coverage / 0.95, 0, 1)."""
    cov = np.asarray(list(max_coverages), dtype=np.float64)
    if cov.size == 0:
        raise VideoActionError("dp_score: no episodes")
    return float(coverage_reward(cov, threshold).mean())


def summarize(episodes: Sequence[Mapping]) -> dict:
    """PushT metrics of episode records (``max_coverage`` / ``final_coverage`` from the tracked ``coverage``)."""
    return {"dp_score": dp_score(e["max_coverage"] for e in episodes),
            "mean_max_coverage": float(np.mean([e["max_coverage"] for e in episodes])),
            "mean_final_coverage": float(np.mean([e["final_coverage"] for e in episodes]))}


# ------------------------------------------------------------------------------------------------ environment
@dataclass
class PushTVisualConfig:
    """Visual-robustness options (evaluation only; physics unchanged)."""

    bg_color: tuple[int, int, int] = (255, 255, 255)
    goal_color: tuple[int, int, int] = (144, 238, 144)  # pygame LightGreen
    n_distractors: int = 0  # background shapes drawn under everything (no physics)

    @classmethod
    def from_variant(cls, name: str | None) -> "PushTVisualConfig":
        if name in (None, ""):
            return cls()
        table = {"bg-color": cls(bg_color=(205, 225, 250)), "distractors": cls(n_distractors=4),
                 "bg-objects": cls(n_distractors=4),
                 "goal-color": cls(goal_color=(250, 200, 120))}
        if name not in table:
            raise VideoActionError(f"unknown PushT variant {name!r}; valid: {', '.join(VARIANTS)}")
        return table[name]


class VAPushTEnv(PushTEnv):
    """gym-pusht PushT with dict observations; ``multi_goal=True`` is UVA's PushT-M."""

    action_convention = "xy2"  # agent target position in pixels (videoaction.envs.action_conventions)

    def __init__(self, multi_goal: bool = False, visual: PushTVisualConfig | None = None, image_size: int = 96,
                 **kw):
        super().__init__(obs_type="state", render_mode="rgb_array", observation_width=image_size,
                         observation_height=image_size, **kw)
        self.multi_goal = multi_goal
        self.visual = visual or PushTVisualConfig()
        self._distractors: list = []
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            "state": gym.spaces.Box(0, 512, (5,), np.float32)})

    def reset(self, seed=None, options=None):
        super().reset(seed=seed, options=options)  # draws the block/agent state from self.np_random
        rng = self.np_random
        if self.multi_goal:  # UVA fix_goal=False: x, y in 256 +- 100, theta in [0, 2pi), from the env's seeded RNG
            self.goal_pose = np.array([rng.uniform(156, 356), rng.uniform(156, 356), rng.uniform(0, 2 * np.pi)])
        self._distractors = [(rng.integers(0, 2), rng.uniform(20, 492, 2), rng.uniform(12, 40),
                              tuple(int(c) for c in rng.integers(60, 230, 3))) for _ in range(self.visual.n_distractors)]
        info = self._get_info()
        info.update(is_success=False, coverage=float(self._get_coverage()))
        return self.get_obs(), info

    def step(self, action):
        obs, reward, term, trunc, info = super().step(np.asarray(action, dtype=np.float64))
        info["coverage"] = float(info["coverage"])
        info["is_success"] = bool(info["is_success"])
        return obs, float(reward), bool(term), bool(trunc), info

    def get_obs(self):
        state = np.concatenate([np.array(self.agent.position), np.array(self.block.position),
                                [self.block.angle % (2 * np.pi)]]).astype(np.float32)
        return {"image": self._render(), "state": state}

    def _draw(self):
        import pygame
        import pymunk.pygame_util
        from gym_pusht.envs.pymunk_override import DrawOptions

        screen = pygame.Surface((512, 512))
        screen.fill(self.visual.bg_color)
        draw_options = DrawOptions(screen)
        for kind, centre, size, colour in self._distractors:
            c = pymunk.pygame_util.to_pygame(tuple(centre), screen)
            if kind == 0:
                pygame.draw.circle(screen, colour, c, int(size))
            else:
                pygame.draw.rect(screen, colour, pygame.Rect(int(c[0] - size), int(c[1] - size), int(2 * size),
                                                             int(2 * size)))
        goal_body = self.get_goal_pose_body(self.goal_pose)
        for shape in self.block.shapes:
            pts = [pymunk.pygame_util.to_pygame(goal_body.local_to_world(v), screen) for v in shape.get_vertices()]
            pygame.draw.polygon(screen, self.visual.goal_color, pts + [pts[0]])
        self.space.debug_draw(draw_options)
        return screen

    def keypoints9(self) -> np.ndarray:
        """(9, 2) T keypoints: the 8 corners (gym-pusht order) + the centre of gravity."""
        pose = (self.block.position[0], self.block.position[1], self.block.angle)
        return to_world(LOCAL_KEYPOINTS9, pose).astype(np.float32)


# ------------------------------------------------------------------------------------------------ specs
def build(variant: str = "", multi_goal: bool = False, image_size: int = 96, max_steps: int = 300,
          visual: PushTVisualConfig | None = None, **kw) -> gym.Env:
    """kw: ``image_size`` (96), ``max_steps`` (300), ``visual`` (overrides the variant's PushTVisualConfig)."""
    visual = visual or PushTVisualConfig.from_variant(variant or None)
    return gym.wrappers.TimeLimit(VAPushTEnv(multi_goal=multi_goal, visual=visual, image_size=image_size, **kw),
                                  max_steps)


INSTRUCTIONS = {"pusht": "Push the T-shaped block onto the green target.",
                "pusht-m": "Push the T-shaped block onto the green target pose shown in the image."}

METRICS = MetricSpec(
    tracked_info=("coverage",),
    summarize=summarize,
    headline=("dp_score", "mean_max_coverage"),
    labels={"dp_score": "DP score", "success_rate": "success rate", "mean_max_coverage": "mean max coverage"},
    episode_columns={"max_coverage": "max coverage", "final_coverage": "final coverage"},
    definitions={
        "success_rate": "fraction of episodes with coverage > 0.95 at any step (LeRobot pc_success/100)",
        "dp_score": ("mean over episodes of max over steps of clip(coverage/0.95, 0, 1) "
                     "(Diffusion Policy / UVA test/mean_score; the per-step reward, so also the mean max reward)"),
        "seeds_note": ("gym-pusht 0.1.8 draws initial states differently from Diffusion Policy's legacy env: "
                       "the same seeds are not DP's test set; compare only runs with the same gym-pusht version"),
    })

OBSERVATION = ObservationProtocol(image_keys=("image",), state_key="state", proprio_dims=2,
                                  proprio_doc="agent_pos: agent x, y in pixels (Diffusion Policy's image task)",
                                  privileged_state_dims=5)


def _spec(name: str, multi_goal: bool, gym_id: str, description: str) -> EnvSpec:
    return EnvSpec(
        name=name, family="pusht", gym_id=gym_id, description=description,
        build=functools.partial(build, multi_goal=multi_goal),
        variants=VARIANTS, dash_variants=True,
        instruction=lambda variant, _n=name: INSTRUCTIONS[_n],
        observation=OBSERVATION, max_steps=300, seed_start=100_000, metrics=METRICS,
        action_convention=VAPushTEnv.action_convention,
        render_backend="pygame software rendering (CPU; no OpenGL)",
        packages=("gym-pusht", "pymunk", "shapely", "pygame"),
        demo="videoaction.demos.pusht:record_episode")


SPECS = (
    register_env(_spec("pusht", False, "videoaction/PushT-v0", "PushT, fixed goal (gym-pusht 0.1.8)")),
    register_env(_spec("pusht-m", True, "videoaction/PushT-M-v0", "PushT-M: a new goal pose per episode (UVA)")),
)
