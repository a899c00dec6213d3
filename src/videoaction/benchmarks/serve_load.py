"""Loopback load test of the policy server: N concurrent clients x M requests against a tiny real policy.

Reports round-trip latency (client send -> reply decoded) and server overhead = round trip minus the model's
forward time (``policy_timing.infer_ms``; with batching that is the whole batch's forward pass), the batch sizes
the server formed, throughput and errors (must be zero). Binds 127.0.0.1 only. The clients are threads in this
process, so their Python work competes with the server for the GIL: the overhead is an upper bound.
"""

from __future__ import annotations

import tempfile
import threading
import time

import numpy as np
import torch

from videoaction.models.base import Policy, load_policy


def tiny_policy(seed: int = 0, directory=None, image_size: int = 32, sample_steps: int = 2,
                shrink: bool = True) -> Policy:
    """A tiny real Diffusion Policy (preset ``dp-tiny``, shrunk unless ``shrink=False``), normaliser fitted to a
    PushT-like range [0, 512], saved with ``save_pretrained`` and loaded back through :func:`load_policy`."""
    from videoaction.data.normalizer import Normalizer
    from videoaction.models.dp.config import dp_tiny
    from videoaction.models.dp.policy import DiffusionPolicy

    torch.manual_seed(seed)
    cfg = dp_tiny()
    m = cfg.model
    if shrink:
        m.backbone_width, m.down_dims, m.step_embed_dim = 8, (16, 32), 16
        m.num_keypoints, m.image_feature_dim = 8, 16
    m.obs_image_size = image_size
    m.sampler, m.ddim_steps = "ddim", sample_steps
    cfg.dataset.image_size = image_size
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(seed)
    ranges = {"action": rng.uniform(0.0, 512.0, (256, m.action_dim)), "state": rng.uniform(0.0, 512.0, (256, m.state_dim))}
    ranges["action"][:2] = [[0.0, 0.0], [512.0, 512.0]]
    policy.set_normalizer(Normalizer.fit_arrays({k: v.astype(np.float32) for k, v in ranges.items()}, {}))
    if directory is None:
        directory = tempfile.mkdtemp(prefix="va-tiny-dp-")
    policy.save_pretrained(directory)
    return load_policy(directory)


def random_observation(metadata: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One valid observation for the server's advertised spec (uint8 images, float32 states in [0, 512])."""
    obs = {}
    for key, spec in metadata["observation"].items():
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        if dtype == np.uint8:
            obs[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            obs[key] = rng.uniform(0.0, 512.0, shape).astype(dtype)
    return obs


def _client_worker(port: int, n: int, seed: int, out: dict, barrier: threading.Barrier) -> None:
    from videoaction.serve.client import PolicyClient

    rts, model, errors = [], [], []
    try:
        client = PolicyClient("127.0.0.1", port, connect_timeout=30.0)
    except Exception as exc:  # counted, not raised: the benchmark reports errors
        out[seed] = ([], [], [repr(exc)] * n)
        barrier.wait()
        return
    rng = np.random.default_rng(seed)
    observations = [random_observation(client.metadata, rng) for _ in range(min(n, 8))]
    barrier.wait()
    for i in range(n):
        t0 = time.perf_counter()
        try:
            reply = client.infer(observations[i % len(observations)])
            rt = (time.perf_counter() - t0) * 1000.0
            if not np.isfinite(reply["actions"]).all():
                raise ValueError("non-finite actions")
            rts.append(rt)
            model.append(float(reply["policy_timing"]["infer_ms"]))
        except Exception as exc:
            errors.append(repr(exc))
    client.close()
    out[seed] = (rts, model, errors)


def load_test(policy: Policy, clients: int = 8, requests: int = 200, max_batch: int = 8,
              batch_window_ms: float = 2.0, torch_threads: int | None = 1) -> dict:
    from videoaction.serve.server import ServeConfig, ServerThread

    cfg = ServeConfig(host="127.0.0.1", port=0, max_batch=max_batch, batch_window_ms=batch_window_ms,
                      torch_threads=torch_threads)
    results: dict = {}
    with ServerThread(policy, cfg) as srv:
        barrier = threading.Barrier(clients + 1)
        threads = [threading.Thread(target=_client_worker, args=(srv.port, requests, s, results, barrier))
                   for s in range(clients)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        stats = srv.server.stats
    rt = np.array([x for r in results.values() for x in r[0]])
    model = np.array([x for r in results.values() for x in r[1]])
    errors = [e for r in results.values() for e in r[2]]
    over = rt - model if len(rt) else np.zeros(0)
    pct = (lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan"))
    return {"clients": clients, "requests_per_client": requests, "max_batch": max_batch, "ok": int(len(rt)),
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "rt_p50_ms": pct(rt, 50), "rt_p99_ms": pct(rt, 99), "model_p50_ms": pct(model, 50),
            "overhead_p50_ms": pct(over, 50), "overhead_p99_ms": pct(over, 99),
            "throughput_rps": len(rt) / wall if wall > 0 else 0.0, "wall_s": wall,
            "batch_sizes": dict(sorted(stats.batch_sizes.items()))}


def run(quick: bool = False) -> dict:
    """8 clients x 200 requests (quick: 8 x 25) on loopback against a tiny DP; batched (8) and, unless quick,
    unbatched for comparison; plus one client alone (the overhead without queueing). Raises if any request failed."""
    from videoaction.benchmarks.timing import machine_info

    policy = tiny_policy()
    requests = 25 if quick else 200
    out = {"machine": machine_info(), "single_client": load_test(policy, 1, requests, max_batch=8),
           "batched": load_test(policy, 8, requests, max_batch=8)}
    if not quick:
        out["unbatched"] = load_test(policy, 8, requests, max_batch=1)
    for name in ("single_client", "batched", "unbatched"):
        if name in out:
            r = out[name]
            print(f"serve_load [{name}, max_batch={r['max_batch']}]: {r['clients']} clients x {r['requests_per_client']} "
                  f"requests, errors {r['errors']}, round trip p50 {r['rt_p50_ms']:.1f} ms / p99 {r['rt_p99_ms']:.1f} ms, "
                  f"model p50 {r['model_p50_ms']:.1f} ms, overhead p50 {r['overhead_p50_ms']:.1f} ms / "
                  f"p99 {r['overhead_p99_ms']:.1f} ms, {r['throughput_rps']:.0f} req/s, batches {r['batch_sizes']}")
            if r["errors"]:
                raise RuntimeError(f"serve_load: {r['errors']} failed requests, first: {r['first_error']}")
    return out


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
