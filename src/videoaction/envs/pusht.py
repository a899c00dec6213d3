"""PushT environments on gym-pusht 0.1.8 with dict observations, PushT-M (per-episode goal) and visual variants.

Observations: ``image`` uint8 (H, W, 3) rendered by the env, ``state`` float32 (5,) = agent xy, block xy, angle.
``info`` has ``is_success`` and ``coverage`` (relative to the episode's goal).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gym_pusht.envs.pusht import PushTEnv

VARIANTS = ("bg-color", "bg-objects", "goal-color")  # "distractors" = "bg-objects"


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
            from videoaction.data.errors import VideoActionError

            raise VideoActionError(f"unknown PushT variant {name!r}; valid: {', '.join(VARIANTS)}")
        return table[name]


class VAPushTEnv(PushTEnv):
    """gym-pusht PushT with dict observations; ``multi_goal=True`` is UVA's PushT-M."""

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
        from videoaction.demos.pusht_expert import LOCAL_KEYPOINTS9, to_world

        pose = (self.block.position[0], self.block.position[1], self.block.angle)
        return to_world(LOCAL_KEYPOINTS9, pose).astype(np.float32)


PUSHT_M_ID = "videoaction/PushT-M-v0"
if PUSHT_M_ID not in gym.registry:
    gym.register(id=PUSHT_M_ID, entry_point="videoaction.envs.pusht:VAPushTEnv", max_episode_steps=300,
                 kwargs={"multi_goal": True})
    gym.register(id="videoaction/PushT-v0", entry_point="videoaction.envs.pusht:VAPushTEnv", max_episode_steps=300)
