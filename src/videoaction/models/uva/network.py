"""UVA's joint video-action transformer (reference ``mar_con_unified``, uva.md §5-6), state-dict names unchanged.

Token position i = t * L + s (future frame t < T, spatial position s < L = h * w). Each token is the channel
concatenation of: the future latent (``z_proj``; masked / hidden positions -> learned ``fake_latent_x``), the aligned
history latent (``z_proj_cond``; hidden -> ``fake_latent_x``), the action stream (``action_proj_cond`` of action k
repeated over its share of tokens, or ``fake_action_latent``), optionally proprioception
(``proprioception_proj_cond``) and history actions (``history_action_proj_cond``); fused by ``proj_cond_x_layer``;
plus factorised temporal x spatial position embeddings. Language: a text feature through ``text_proj_cond`` (dropped
-> ``fake_latent``) repeated into ``text_tokens`` prepended tokens with ``text_pos_embed``. Then ``z_proj_ln`` ->
encoder blocks -> ``encoder_norm`` -> ``decoder_embed`` -> + decoder position embeddings -> decoder blocks ->
``decoder_norm`` -> drop text tokens -> + diffusion embeddings = z (B, T*L, D), one condition per video token.
No MAE token dropping and no causal mask: every token attends to every other.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from videoaction.models.uva.action_head import ActionHead
from videoaction.models.uva.config import UVAConfig
from videoaction.nn.diffusion import DiffusionHead
from videoaction.nn.transformer import Block


def _stream_index(n_items: int, n_tokens: int) -> torch.Tensor:
    """Token -> item map: item k covers tokens [k*N/n, (k+1)*N/n) (``repeat_interleave`` when n divides N)."""
    return torch.arange(n_tokens) * n_items // n_tokens


class UVANetwork(nn.Module):
    """The MAR module of UVA: token streams -> encoder/decoder -> z, plus the video head ``diffloss`` and the
    action head ``diffactloss`` (absent when ``cfg.predict_action`` is False)."""

    def __init__(self, cfg: UVAConfig, latent_channels: int, grid: tuple[int, int], n_future: int, n_history: int,
                 n_history_actions: int = 0):
        super().__init__()
        d = cfg.width
        self.cfg, self.width = cfg, d
        self.latent_channels, self.grid = latent_channels, tuple(grid)
        self.n_future, self.n_history = n_future, n_history
        self.seq_len = grid[0] * grid[1]  # L tokens per frame
        self.n_tokens = n_future * self.seq_len  # N
        self.n_text = cfg.text_tokens if cfg.language else 0
        self.n_history_actions = n_history_actions if cfg.use_history_action else 0

        self.fake_latent_x = nn.Parameter(torch.zeros(1, d))
        self.fake_action_latent = nn.Parameter(torch.zeros(1, d))
        if cfg.language:
            self.fake_latent = nn.Parameter(torch.zeros(1, d))
            self.text_pos_embed = nn.Parameter(torch.zeros(1, self.n_text, d))
        self.temporal_pos_embed = nn.Parameter(torch.zeros(1, n_future, d))
        self.spatial_pos_embed = nn.Parameter(torch.zeros(1, self.seq_len, d))
        self.decoder_temporal_pos_embed = nn.Parameter(torch.zeros(1, n_future, d))
        self.decoder_spatial_pos_embed = nn.Parameter(torch.zeros(1, self.seq_len, d))
        if cfg.language:
            self.decoder_text_pos_embed = nn.Parameter(torch.zeros(1, self.n_text, d))
        self.diffusion_temporal_embed = nn.Parameter(torch.zeros(1, n_future, d))
        self.diffusion_spatial_embed = nn.Parameter(torch.zeros(1, self.seq_len, d))

        self.z_proj_cond = nn.Linear(latent_channels, d)
        self.z_proj = nn.Linear(latent_channels, d)
        self.action_proj_cond = nn.Linear(cfg.action_dim, d)
        n_streams = 3
        if cfg.use_state:
            self.proprioception_proj_cond = nn.Linear(cfg.state_dim, d)
            n_streams += 1
        if self.n_history_actions:
            self.history_action_proj_cond = nn.Linear(cfg.action_dim, d)
            n_streams += 1
        if cfg.language:
            self.text_proj_cond = nn.Linear(cfg.text_dim, d)
        self.proj_cond_x_layer = nn.Linear(n_streams * d, d)

        self.z_proj_ln = nn.LayerNorm(d, eps=1e-6)
        block = dict(mlp_ratio=cfg.mlp_ratio, qkv_bias=True, attn_drop=cfg.attn_dropout, proj_drop=cfg.proj_dropout)
        self.encoder_blocks = nn.ModuleList([Block(d, cfg.num_heads, **block) for _ in range(cfg.encoder_depth)])
        self.encoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_embed = nn.Linear(d, d)
        self.decoder_blocks = nn.ModuleList([Block(d, cfg.num_heads, **block) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self._init_weights()  # before the heads: they initialise themselves (as in MAR)

        self.diffloss = DiffusionHead(latent_channels, d, cfg.video_head)
        if cfg.predict_action:
            self.diffactloss = ActionHead(cfg.action_dim, d, n_future, self.grid, cfg.n_actions, cfg.action_head,
                                          pool=cfg.action_pool)
        if cfg.predict_state:  # reference ``diffproploss``: same aggregation, diffuses future proprio states
            self.diffproploss = ActionHead(cfg.state_dim, d, n_future, self.grid, cfg.n_actions, cfg.action_head,
                                           pool=cfg.action_pool)
        self.register_buffer("_action_index", _stream_index(cfg.n_actions, self.n_tokens), persistent=False)
        self.register_buffer("_frame_index", _stream_index(n_history, n_future), persistent=False)
        self.register_buffer("_state_index", _stream_index(n_history, self.n_tokens), persistent=False)
        if self.n_history_actions:
            self.register_buffer("_hist_action_index", _stream_index(self.n_history_actions, self.n_tokens),
                                 persistent=False)

    def _init_weights(self) -> None:
        for name, p in self.named_parameters(recurse=False):
            nn.init.normal_(p, std=0.02)  # position embeddings and fake latents
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------ helpers
    def _block(self, blk: Block, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def _tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, T, L, C)."""
        return rearrange(latents, "b t c h w -> b t (h w) c")

    def _fake(self, b: int, n: int) -> torch.Tensor:
        return self.fake_latent_x.expand(b, n, -1)

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, future: torch.Tensor | None, history: torch.Tensor | None, *,
                future_mask: torch.Tensor | None = None, actions: torch.Tensor | None = None,
                history_drop: torch.Tensor | None = None, state: torch.Tensor | None = None,
                history_actions: torch.Tensor | None = None, text: torch.Tensor | None = None,
                text_drop: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        """Decoder output z (B, T*L, D).

        future: latents (B, T, C, h, w), or None = every position fake (policy_model).
        future_mask: (B, L) bool, True -> that spatial position is fake in every future frame; None = all visible.
        history: latents (B, T_h, C, h, w), or None = hidden (inverse_model); history_drop (B,) hides per sample.
        actions: normalised (B, n_actions, A) (dynamic_model) or None = fake_action_latent.
        state: normalised (B, T_h, Ds); history_actions: normalised (B, n_ha, A), the action executed before each
        history frame, NaN rows (none executed: episode start) -> ``fake_action_latent``; text: (B, text_dim),
        text_drop (B,) bool.
        """
        b = next(t.shape[0] for t in (future, history, actions, text) if t is not None) if batch_size is None \
            else batch_size
        n, d = self.n_tokens, self.width
        # 1. future stream
        if future is None:
            x = self._fake(b, n)
        else:
            x = rearrange(self.z_proj(self._tokens(future)), "b t l d -> b (t l) d")
            if future_mask is not None:  # the same spatial mask in every future frame
                m = repeat(future_mask, "b l -> b (t l) 1", t=self.n_future)
                x = torch.where(m, self.fake_latent_x.to(x.dtype), x)
        # 2. aligned history stream (history frame _frame_index[t] for future frame t)
        if history is None:
            cond = self._fake(b, n)
        else:
            cond = rearrange(self.z_proj_cond(self._tokens(history)[:, self._frame_index]), "b t l d -> b (t l) d")
            if history_drop is not None:
                cond = torch.where(history_drop.view(b, 1, 1), self.fake_latent_x.to(cond.dtype), cond)
        # 3. action stream
        if actions is None:
            act = self.fake_action_latent.expand(b, n, -1)
        else:
            act = self.action_proj_cond(actions)[:, self._action_index]
        streams = [x, cond, act]
        if self.cfg.use_state:
            if state is None:
                raise ValueError("UVANetwork: model.use_state is on but no state was given")
            streams.append(self.proprioception_proj_cond(state)[:, self._state_index])
        if self.n_history_actions:
            if history_actions is None:
                raise ValueError("UVANetwork: model.use_history_action is on but no history actions were given")
            known = ~torch.isnan(history_actions).any(-1, keepdim=True)  # (B, n_ha, 1); NaN = none executed yet
            ha = self.history_action_proj_cond(torch.nan_to_num(history_actions))
            ha = torch.where(known, ha, self.fake_action_latent.to(ha.dtype))  # the learned "no action" token
            streams.append(ha[:, self._hist_action_index])
        x = self.proj_cond_x_layer(torch.cat(streams, dim=-1))  # (B, N, D)
        pos = (self.temporal_pos_embed.unsqueeze(2) + self.spatial_pos_embed.unsqueeze(1)).reshape(1, n, d)
        x = x + pos
        # 4. language tokens, prepended
        if self.n_text:
            if text is None:
                t = self.fake_latent.expand(b, -1)
            else:
                t = self.text_proj_cond(text)
                if text_drop is not None:
                    t = torch.where(text_drop.view(b, 1), self.fake_latent.to(t.dtype), t)
            t = t.unsqueeze(1).expand(b, self.n_text, d) + self.text_pos_embed
            x = torch.cat([t, x], dim=1)
        # 5. encoder
        x = self.z_proj_ln(x)
        for blk in self.encoder_blocks:
            x = self._block(blk, x)
        x = self.encoder_norm(x)
        # 6. decoder
        x = self.decoder_embed(x)
        dpos = (self.decoder_temporal_pos_embed.unsqueeze(2) + self.decoder_spatial_pos_embed.unsqueeze(1))
        dpos = dpos.reshape(1, n, d)
        if self.n_text:
            dpos = torch.cat([self.decoder_text_pos_embed, dpos], dim=1)
        x = x + dpos
        for blk in self.decoder_blocks:
            x = self._block(blk, x)
        x = self.decoder_norm(x)[:, self.n_text:]
        diff = (self.diffusion_temporal_embed.unsqueeze(2) + self.diffusion_spatial_embed.unsqueeze(1)).reshape(1, n, d)
        return x + diff
