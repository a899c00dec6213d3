"""PushT on the real gym-pusht 0.1.8 physics, with UVA's multi-goal variant and visual-robustness variants.

Every variant is one :class:`PushTConfig`; nothing branches on a name. Observations are
``{"image": uint8 (S, S, 3), "state": float32 (5,) = agent xy, block xy, block angle}``; ``info`` carries
``is_success`` (coverage > 0.95), ``coverage``, ``goal_pose``, ``keypoints`` (8, 2) and ``n_contacts``.

* ``pusht``: gym-pusht's fixed goal (256, 256, pi/4).
* ``pusht-m`` (UVA's PushT-M): the goal pose is drawn per episode from the env's own seeded RNG (x, y in
  256 +- 100, theta in [0, 2 pi)) and drawn in the image, so a policy must read the goal from pixels; coverage and
  success are measured against that goal. (The reference draws goals from numpy's global RNG: not reproducible.)
* ``pusht-bg-color``, ``pusht-bg-objects``, ``pusht-goal-color``: the UVA paper's robustness tests — a different
  background colour, background distractor shapes (drawn only, no physics), a different goal colour.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import gymnasium as gym
import numpy as np
import pygame
import pymunk
import pymunk.pygame_util
from gym_pusht.envs.pusht import PushTEnv, pymunk_to_shapely

DEFAULT_GOAL = (256.0, 256.0, np.pi / 4)


@dataclass
class PushTConfig:
    """Everything that differs between PushT variants."""

    image_size: int = 96
    random_goal: bool = False  # PushT-M
    goal_xy_range: float = 100.0  # random goal: x, y uniform in 256 +- range
    goal_color: tuple[int, int, int] = (144, 238, 144)  # pygame "LightGreen"
    background_color: tuple[int, int, int] = (255, 255, 255)
    n_distractors: int = 0  # background shapes drawn under everything else (no physics)
    distractor_size: tuple[float, float] = (25.0, 55.0)
    language: str = "Push the T-shaped block onto the T-shaped target."


VARIANTS: dict[str, PushTConfig] = {
    "pusht": PushTConfig(),
    "pusht-m": PushTConfig(random_goal=True,
                           language="Push the T-shaped block onto the T-shaped target drawn in the image."),
    "pusht-bg-color": PushTConfig(background_color=(205, 225, 250)),
    "pusht-bg-objects": PushTConfig(n_distractors=4),
    "pusht-goal-color": PushTConfig(goal_color=(240, 128, 128)),  # "LightCoral"
    "pusht-m-bg-color": PushTConfig(random_goal=True, background_color=(205, 225, 250)),
}


class VideoActionPushT(PushTEnv):
    """gym-pusht's ``PushTEnv`` with a configurable goal, background and goal colour, and dict observations."""

    def __init__(self, config: PushTConfig | None = None, **overrides):
        self.va_config = replace(config or PushTConfig(), **overrides)
        size = self.va_config.image_size
        super().__init__(obs_type="state", render_mode="rgb_array", observation_width=size, observation_height=size)
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (size, size, 3), dtype=np.uint8),
            "state": gym.spaces.Box(np.array([0, 0, 0, 0, 0], np.float32),
                                    np.array([512, 512, 512, 512, 2 * np.pi], np.float32), dtype=np.float32),
        })
        self.language = self.va_config.language
        self._goal = np.array(DEFAULT_GOAL)
        self._distractors: list[tuple[str, tuple[float, float], float, tuple[int, int, int]]] = []

    # --------------------------------------------------------------------------------------------- episode
    def reset(self, seed=None, options=None):
        super().reset(seed=seed, options=options)  # draws the initial state from self.np_random
        cfg = self.va_config
        goal = DEFAULT_GOAL
        if options is not None and options.get("goal_pose") is not None:
            goal = tuple(float(v) for v in options["goal_pose"])
        elif cfg.random_goal:
            r = cfg.goal_xy_range
            goal = (256.0 + self.np_random.uniform(-r, r), 256.0 + self.np_random.uniform(-r, r),
                    self.np_random.uniform(0.0, 2 * np.pi))
        self._goal = np.array(goal, dtype=np.float64)
        self.goal_pose = self._goal
        self._distractors = []
        for _ in range(cfg.n_distractors):
            kind = "circle" if self.np_random.random() < 0.5 else "square"
            xy = (float(self.np_random.uniform(40, 472)), float(self.np_random.uniform(40, 472)))
            size = float(self.np_random.uniform(*cfg.distractor_size))
            color = tuple(int(c) for c in self.np_random.integers(60, 220, size=3))
            self._distractors.append((kind, xy, size, color))
        info = self._info(self._get_info())
        info["is_success"] = bool(info["coverage"] > self.success_threshold)
        return self._observation(), info

    def _setup(self):
        super()._setup()
        self.goal_pose = getattr(self, "_goal", np.array(DEFAULT_GOAL))

    def step(self, action):
        _, reward, terminated, truncated, info = super().step(np.asarray(action, dtype=np.float64))
        return self._observation(), reward, terminated, truncated, self._info(info)

    def _info(self, info: dict) -> dict:
        info["coverage"] = float(info.get("coverage", self._get_coverage()))
        info["keypoints"] = self.get_keypoints(self._block_shapes).astype(np.float32)
        info["goal_pose"] = np.array(self.goal_pose, dtype=np.float32)
        info["language"] = self.language
        return info

    def _observation(self) -> dict:
        state = np.array([*self.agent.position, *self.block.position, self.block.angle % (2 * np.pi)], np.float32)
        return {"image": self._render(), "state": state}

    def get_obs(self):  # gym-pusht's own observation (used inside its reset/step); ours is built above
        return None

    # --------------------------------------------------------------------------------------------- drawing
    def _draw(self):
        cfg = self.va_config
        screen = pygame.Surface((512, 512))
        screen.fill(cfg.background_color)
        draw_options = pymunk.pygame_util.DrawOptions(screen)
        for kind, (x, y), size, color in self._distractors:
            cx, cy = pymunk.pygame_util.to_pygame((x, y), screen)
            if kind == "circle":
                pygame.draw.circle(screen, color, (cx, cy), int(size / 2))
            else:
                pygame.draw.rect(screen, color, pygame.Rect(int(cx - size / 2), int(cy - size / 2), int(size), int(size)))
        goal_body = self.get_goal_pose_body(np.asarray(self.goal_pose))
        for shape in self.block.shapes:
            points = [pymunk.pygame_util.to_pygame(goal_body.local_to_world(v), screen) for v in shape.get_vertices()]
            pygame.draw.polygon(screen, cfg.goal_color, points + [points[0]])
        self.space.debug_draw(draw_options)
        return screen

    # --------------------------------------------------------------------------------------------- helpers
    def coverage_of(self, block_pose, goal_pose=None) -> float:
        """Coverage of a hypothetical block pose against this episode's goal (or ``goal_pose``)."""
        goal = self.get_goal_pose_body(np.asarray(self.goal_pose if goal_pose is None else goal_pose, np.float64))
        body = self.get_goal_pose_body(np.asarray(block_pose, np.float64))
        g = pymunk_to_shapely(goal, self.block.shapes)
        b = pymunk_to_shapely(body, self.block.shapes)
        return float(g.intersection(b).area / g.area)

    @property
    def goal(self) -> np.ndarray:
        return np.array(self.goal_pose, dtype=np.float64)


def make_pusht(variant: str = "pusht", max_episode_steps: int = 300, **overrides) -> gym.Env:
    """A PushT variant by name (see :data:`VARIANTS`) with gymnasium's time limit."""
    from videoaction.data.errors import VideoActionError

    if variant not in VARIANTS:
        raise VideoActionError(f"unknown PushT variant {variant!r}; valid: {sorted(VARIANTS)}")
    env = VideoActionPushT(VARIANTS[variant], **overrides)
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)

