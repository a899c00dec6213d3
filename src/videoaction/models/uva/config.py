"""UVA configs: the model part (:class:`UVAConfig`), the run config (:class:`UVARunConfig`), sizes and presets.

Sizes (``SIZES``): ``tiny`` trains on a CPU; ``base`` is the paper's MAR-B (width 768, 12 + 12 blocks, 12 heads,
diffusion heads depth 6 width 1024). With ``base``, PushT settings (A = 2, no language, 16 x 16 tokens, 4 + 4
frames, 16 actions) give exactly the reference's state dict (uva.md §12, 444 keys, 261,079,156 parameters).

Presets: ``uva-tiny`` / ``uva-tiny-video`` (CPU, small tokenizer at 64 px, 4 x 4 tokens per frame), ``uva-tiny-fast``
(uva-tiny at width 128: 4x fewer training FLOPs per sample, better held-out actions and video at equal CPU time),
``uva-base`` / ``uva-base-video`` (paper: kl16 at 256 px), ``uva-base-lang`` (LIBERO-like: A = 10, CLIP text features
512-d). The ``-video`` presets are stage 1 (``video_model`` only, no action head); stage 2 starts from them with
``--init``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from videoaction.config import DatasetConfig, FrameConfig, OptimConfig, RunConfig, aligned_padding
from videoaction.errors import ConfigError
from videoaction.nn.diffusion import DiffusionHeadConfig
from videoaction.nn.text import TextEncoderConfig
from videoaction.nn.tokenizer import TokenizerConfig

TASK_MODES: tuple[str, ...] = ("video_model", "dynamic_model", "policy_model", "inverse_model", "full_dynamic_model")

# name -> (width, encoder depth, decoder depth, heads, diffusion-head width, diffusion-head depth)
SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (256, 2, 2, 4, 256, 3),
    "small": (512, 6, 6, 8, 768, 4),
    "base": (768, 12, 12, 12, 1024, 6),  # MAR-B, the paper's model
    "large": (1024, 16, 16, 16, 1280, 8),  # MAR-L widths
}


@dataclass
class UVAConfig:
    """Model part of a UVA run. Frame counts and the token grid come from ``dataset`` and the tokenizer."""

    size: str = "tiny"  # label of the SIZES entry the numbers below came from (informational)
    # --- transformer
    width: int = 256
    encoder_depth: int = 2
    decoder_depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    grad_checkpointing: bool = False  # recompute transformer blocks in backward (memory for base-size training)
    # --- tokenizer (frozen, its weights are part of the checkpoint)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    sample_latents: bool = False  # training: posterior sample (reference) instead of its mean
    obs_image_size: int = 96  # raw environment frame size (observation spec; frames are resized to image_size)
    # --- heads
    video_head: DiffusionHeadConfig = field(default_factory=lambda: DiffusionHeadConfig(width=256, depth=3))
    action_head: DiffusionHeadConfig = field(
        default_factory=lambda: DiffusionHeadConfig(width=256, depth=3, clip_denoised=True))
    predict_action: bool = True  # False = stage 1 (no action head at all)
    action_dim: int = 2
    n_actions: int = 16  # predicted actions per chunk (the reference hard-codes 16)
    n_action_steps: int = 8  # executed per chunk
    action_pool: int = 4  # action head: adaptive average pool of each frame's token grid to pool x pool
    shift_action: bool = True  # targets action[h : h + n_actions] (h = last history position), else [h+1 : ...]
    # --- optional condition streams
    use_state: bool = False  # proprioception at the history frames (dataset.state_key / obs["state"])
    state_dim: int = 2
    predict_state: bool = False  # proprio-prediction head ``diffproploss`` (future states over the action window)
    use_history_action: bool = False  # actions of the history steps 0..h (obs["history_action"] at inference)
    language: bool = False
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    text_dim: int = 512  # text feature width (CLIP ViT-B/32: 512); the encoder's dim must match
    text_tokens: int = 64  # text feature repeated into this many prepended tokens
    # --- training objective
    task_modes: tuple[str, ...] = TASK_MODES
    mask_ratio_min: float = 0.7
    mask_ratio_loc: float = 1.0
    mask_ratio_std: float = 0.25
    label_drop_prob: float = 0.1  # text -> fake_latent per sample (CFG on language)
    history_drop_prob: float = 0.0  # history -> fake_latent_x per sample in video_model/dynamic_model (CFG w/o text)
    # --- inference defaults (predict_video / plan)
    num_iter: int = 1
    cfg: float = 1.0
    cfg_schedule: str = "linear"  # linear | constant
    cfg_condition: str = "auto"  # which condition the unconditional half drops: auto | text | history
    act_cfg: float = 1.0  # != 1: policy-mode training drops the guidance condition too (history: history_drop_prob)
    temperature: float = 0.95

    @property
    def guidance_condition(self) -> str:
        """The condition the unconditional half of classifier-free guidance drops: ``text`` or ``history``."""
        return self.cfg_condition if self.cfg_condition != "auto" else ("text" if self.language else "history")

    @property
    def history_drop_modes(self) -> tuple[str, ...]:
        """Task modes whose training drops the history with ``history_drop_prob``: the video modes, and the modes
        with an action loss too when action guidance is configured (else its unconditional branch is untrained)."""
        modes = ("video_model", "dynamic_model")
        return modes + ("policy_model", "full_dynamic_model") if self.act_cfg != 1.0 else modes

    def validate(self) -> None:
        bad = [m for m in self.task_modes if m not in TASK_MODES]
        if bad or not self.task_modes:
            raise ConfigError(f"model.task_modes: unknown or empty {list(self.task_modes)}; choose from {TASK_MODES}")
        if not self.predict_action and any(m in ("policy_model", "inverse_model", "full_dynamic_model")
                                           for m in self.task_modes):
            raise ConfigError(f"model.task_modes {list(self.task_modes)} need an action head, but "
                              "model.predict_action is False (stage 1 trains video_model / dynamic_model only)")
        if self.width % self.num_heads:
            raise ConfigError(f"model.width {self.width} is not divisible by model.num_heads {self.num_heads}")
        if self.cfg_schedule not in ("linear", "constant"):
            raise ConfigError(f"model.cfg_schedule must be linear or constant, found {self.cfg_schedule!r}")
        if self.cfg_condition not in ("auto", "text", "history"):
            raise ConfigError(f"model.cfg_condition must be auto, text or history, found {self.cfg_condition!r}")
        if self.act_cfg != 1.0 and self.predict_action:
            drop = "label_drop_prob" if self.guidance_condition == "text" else "history_drop_prob"
            if getattr(self, drop) <= 0 or (drop == "label_drop_prob" and not self.language):
                raise ConfigError(f"model.act_cfg {self.act_cfg}: action guidance drops the "
                                  f"{self.guidance_condition} condition, so training must drop it too: set "
                                  f"model.{drop} > 0 (or model.act_cfg 1)")
        if self.n_action_steps > self.n_actions:
            raise ConfigError(f"model.n_action_steps {self.n_action_steps} > model.n_actions {self.n_actions}")


def model_config(size: str, **overrides) -> UVAConfig:
    """A :class:`UVAConfig` with the transformer and both diffusion heads sized from ``SIZES[size]``."""
    if size not in SIZES:
        raise ConfigError(f"unknown UVA size {size!r}; available: {sorted(SIZES)}")
    w, de, dd, h, hw, hd = SIZES[size]
    cfg = UVAConfig(size=size, width=w, encoder_depth=de, decoder_depth=dd, num_heads=h,
                    video_head=DiffusionHeadConfig(width=hw, depth=hd),
                    action_head=DiffusionHeadConfig(width=hw, depth=hd, clip_denoised=True))
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ConfigError(f"model_config: unknown UVAConfig field {k!r}")
        setattr(cfg, k, v)
    return cfg


@dataclass
class UVARunConfig(RunConfig):
    family: str = "uva"
    model: UVAConfig = field(default_factory=UVAConfig)


def _uva_dataset(image_size: int, **kw) -> DatasetConfig:
    """Window of 32 steps, frames [3, 7, 11, 15 | 19, 23, 27, 31] (uva.md §4), padded 15 / 9 (the reference pads
    1 / 7): every step a rollout reaches is trained, episode start included (see :func:`aligned_padding`)."""
    frames = FrameConfig(n_history=4, n_future=4, offset=3, stride=4, random_history=False)
    before, after = aligned_padding(frames, 32, first_action=frames.last_history, n_action_steps=8)
    return DatasetConfig(horizon=32, pad_before=before, pad_after=after, frames=frames, image_size=image_size, **kw)


def uva_tiny() -> UVARunConfig:
    """CPU: small autoencoder (stride 16, 16 channels) at 64 px -> 4 x 4 tokens per frame, tiny transformer.

    4 x 4 tokens (128 per 8-frame window) train 3x faster than 8 x 8 on a CPU and, at equal wall-clock, reached a
    better held-out video PSNR (27.7 dB vs 26.0 dB, copy-last-frame 27.6 dB) on the quickstart's PushT demos."""
    cfg = UVARunConfig(
        preset="uva-tiny", steps=3000, save_every=500, log_every=10,
        dataset=_uva_dataset(64),
        optim=OptimConfig(batch_size=32, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.02, warmup_steps=100,
                          grad_clip=1.0, ema=True),
        model=model_config("tiny", tokenizer=TokenizerConfig(kind="small", path=None, latent_channels=16, stride=16),
                           attn_dropout=0.0, proj_dropout=0.0, history_drop_prob=0.1),
    )
    # Unlike the reference (no clipping for video), clip the predicted x0 to +-3 (latents have unit std): briefly
    # trained DDPM heads otherwise blow up at t = 999 (measured: held-out PSNR 13.5 dB unclipped vs 25.1 dB).
    cfg.model.video_head.clip_denoised, cfg.model.video_head.clip_range = True, 3.0
    return cfg


def video_stage(cfg: UVARunConfig, preset: str) -> UVARunConfig:
    """Stage 1 of a preset: ``video_model`` only, no action head (stage 2 starts from it with ``--init``)."""
    cfg.preset = preset
    cfg.model.predict_action = False
    cfg.model.task_modes = ("video_model",)
    return cfg


def uva_tiny_video() -> UVARunConfig:
    return video_stage(uva_tiny(), "uva-tiny-video")


def uva_base() -> UVARunConfig:
    """The paper's model: kl16 (set ``--model.tokenizer.path``) at 256 px, MAR-B, PushT action space."""
    return UVARunConfig(
        preset="uva-base", steps=300_000, save_every=10_000, log_every=50,
        dataset=_uva_dataset(256, val_ratio=0.02),
        optim=OptimConfig(batch_size=32, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.02, warmup_steps=1000,
                          grad_clip=0.0, ema=True),
        model=model_config("base", tokenizer=TokenizerConfig(kind="kl16", path=None, latent_channels=16, stride=16,
                                                             scale=0.2325)),
    )


def uva_base_video() -> UVARunConfig:
    return video_stage(uva_base(), "uva-base-video")


def uva_base_lang() -> UVARunConfig:
    """LIBERO-like: A = 10 (pos3 + rot6d + gripper), CLIP text (512) prepended as 64 tokens, 128 px frames."""
    cfg = uva_base()
    cfg.preset = "uva-base-lang"
    cfg.dataset.language_key = "language"
    cfg.dataset.state_key = None
    cfg.dataset.state_dims = None
    cfg.model.action_dim = 10
    cfg.model.obs_image_size = 128
    cfg.model.language = True
    cfg.model.text = TextEncoderConfig(kind="clip")
    cfg.model.text_dim = 512
    return cfg


def uva_tiny_flow() -> UVARunConfig:
    """``uva-tiny`` with flow-matching heads sampled by 8 Euler steps (the reference's suggested next step)."""
    cfg = uva_tiny()
    cfg.preset = "uva-tiny-flow"
    for head in (cfg.model.video_head, cfg.model.action_head):
        head.objective, head.sampler, head.sample_steps = "flow", "euler", 8
    return cfg


def uva_tiny_fast() -> UVARunConfig:
    """``uva-tiny`` at width 128 (transformer and both diffusion heads; 4 heads of 32, same depths, same tokens):
    the same network structure at about a quarter of the FLOPs per training sample (FLOPs per sample go as width^2:
    uva-tiny spends ~70 % of them in its 2 + 2 blocks over 64 tokens per sample, the rest in the per-token heads),
    so a CPU budget trains ~2.8x the samples. ``tests/test_uva_fast.py`` holds the FLOP ratio."""
    cfg = uva_tiny()
    cfg.preset = "uva-tiny-fast"
    m = cfg.model
    m.size, m.width = "tiny-fast", 128
    m.video_head.width = m.action_head.width = 128
    return cfg


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "uva-tiny": uva_tiny,
    "uva-tiny-fast": uva_tiny_fast,
    "uva-tiny-flow": uva_tiny_flow,
    "uva-tiny-video": uva_tiny_video,
    "uva-base": uva_base,
    "uva-base-video": uva_base_video,
    "uva-base-lang": uva_base_lang,
}


# ------------------------------------------------------------------------- observation-protocol presets (CPU)
# PushT: image + agent_pos (the first 2 state dims), as Diffusion Policy's image task; ``-image-only``: frames alone.
# Metaworld: camera image + the 4-d proprio (hand xyz, gripper) and the task instruction; object and goal poses
# only in the preset whose name says ``privileged_state``.
def _with_state(cfg: UVARunConfig, preset: str, state_dims: int | None) -> UVARunConfig:
    cfg.preset = preset
    cfg.dataset.state_key, cfg.dataset.state_dims = "state", state_dims
    cfg.model.use_state = True
    if state_dims:
        cfg.model.state_dim = state_dims
    return cfg


def uva_tiny_pusht() -> UVARunConfig:
    """``uva-tiny`` on PushT's standard observation: 64 px frames + agent_pos."""
    return _with_state(uva_tiny(), "uva-tiny-pusht", 2)


def uva_tiny_pusht_image_only() -> UVARunConfig:
    cfg = uva_tiny()
    cfg.preset = "uva-tiny-pusht-image-only"
    return cfg


def uva_tiny_action() -> UVARunConfig:
    """UVA-action, the paper's central ablation: ``uva-tiny-pusht`` trained on the policy mode alone (no video
    loss, no video/dynamics/inverse modes); architecture, data, optimiser and inference are the same."""
    cfg = uva_tiny_pusht()
    cfg.preset = "uva-tiny-action"
    cfg.model.task_modes = ("policy_model",)
    return cfg


def _metaworld(cfg: UVARunConfig, preset: str, state_dims: int | None) -> UVARunConfig:
    """Several Metaworld tasks in one model, conditioned on the instruction (a learned task embedding, 4 tokens)."""
    cfg = _with_state(cfg, preset, state_dims)
    cfg.dataset.language_key = "language"
    m = cfg.model
    m.language, m.text.kind, m.text.dim, m.text_dim, m.text_tokens = True, "task_embedding", 64, 64, 4
    m.label_drop_prob = 0.0  # the instruction is always known: no classifier-free guidance on it
    return cfg


def uva_tiny_metaworld() -> UVARunConfig:
    """Metaworld's standard observation: camera image + 4-d proprio (hand position, gripper) + instruction."""
    return _metaworld(uva_tiny(), "uva-tiny-metaworld", 4)


def uva_tiny_fast_metaworld() -> UVARunConfig:
    """``uva-tiny-metaworld`` at ``uva-tiny-fast``'s width 128 (a quarter of the FLOPs per sample)."""
    return _metaworld(uva_tiny_fast(), "uva-tiny-fast-metaworld", 4)


def uva_tiny_action_metaworld() -> UVARunConfig:
    cfg = _metaworld(uva_tiny(), "uva-tiny-action-metaworld", 4)
    cfg.model.task_modes = ("policy_model",)
    return cfg


def uva_tiny_metaworld_privileged_state() -> UVARunConfig:
    """The full 39-d Metaworld state (object and goal poses included): a state-only network could solve the easy
    tasks without looking at a pixel, so numbers from it are labelled ``privileged_state`` everywhere."""
    return _metaworld(uva_tiny(), "uva-tiny-metaworld-privileged_state", None)


PRESETS.update({
    "uva-tiny-pusht": uva_tiny_pusht,
    "uva-tiny-pusht-image-only": uva_tiny_pusht_image_only,
    "uva-tiny-action": uva_tiny_action,
    "uva-tiny-metaworld": uva_tiny_metaworld,
    "uva-tiny-fast-metaworld": uva_tiny_fast_metaworld,
    "uva-tiny-action-metaworld": uva_tiny_action_metaworld,
    "uva-tiny-metaworld-privileged_state": uva_tiny_metaworld_privileged_state,
})
