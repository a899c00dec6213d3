"""The ``videoaction`` command: one entry point, one subcommand per job.

Each subcommand lives in its own module exposing ``main(argv: list[str]) -> int | None``; modules are
imported only when their command runs, so ``videoaction --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("videoaction.data.cli", "inspect episode stores: `data info PATH` lists episodes, keys, shapes, metadata"),
    "demos": ("videoaction.demos.cli", "generate scripted demonstrations (pusht, pusht-m, metaworld) into a store"),
    "tokenizer": ("videoaction.train.tokenizer_cli", "train the small image autoencoder of the CPU presets on a store"),
    "encode": ("videoaction.train.encode", "pre-encode every frame of a store into a latent store (latent cache)"),
    "merge-shards": ("videoaction.data.hma_tokens", "join the shards of `encode --format hma` (missing ones skipped)"),
    "generate": ("videoaction.generate", "world model: prompt frames + actions -> predicted frames, mp4 [prompt | "
                 "prediction | ground truth]"),
    "playground": ("videoaction.playground", "drive a world model from the keyboard in a local web page, beside the "
                   "simulator"),
    "predict": ("videoaction.models.vpp.predict_cli", "VPP: predicted video of an episode next to the ground truth, "
                "PSNR / SSIM vs copy-last-frame"),
    "train": ("videoaction.train.cli", "train a model from a preset (two stages, accelerate, EMA, exact resume)"),
    "eval": ("videoaction.eval.cli", "evaluate a checkpoint in a simulator (pusht, pusht-m, metaworld:TASKS)"),
    "serve": ("videoaction.serve.cli", "serve a policy over websocket + msgpack (openpi protocol)"),
    "bench": ("videoaction.benchmarks.cli", "latency / throughput / quality benchmarks of UVA vs Diffusion Policy"),
    "quickstart": ("videoaction.quickstart", "demos -> train a tiny UVA -> evaluate -> HTML report, on a CPU"),
    "convert": ("videoaction.models.convert", "convert reference checkpoints (UVA .ckpt, MAR, kl16) to ours"),
    "presets": ("videoaction.presets_cli", "list the named config presets"),
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: videoaction COMMAND [ARGS...]", "", "Video-action models for robot learning.", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `videoaction COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from videoaction import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"videoaction: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    from videoaction.errors import VideoActionError

    try:
        code = module.main(rest)
    except VideoActionError as exc:  # user mistakes: one clear line, no traceback
        print(f"videoaction {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"videoaction {name}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
