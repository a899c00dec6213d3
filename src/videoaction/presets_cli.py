"""`videoaction presets`: list named presets with their family and model size."""

from __future__ import annotations

import argparse
import json

from videoaction.config import all_presets, to_dict


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="videoaction presets", description=__doc__)
    parser.add_argument("name", nargs="?", help="print this preset's full config as JSON")
    args = parser.parse_args(argv)
    presets = all_presets()
    if args.name:
        from videoaction.config import get_preset

        print(json.dumps(to_dict(get_preset(args.name)), indent=2))
        return 0
    for name in sorted(presets):
        cfg = presets[name]()
        print(f"{name:<16} family={cfg.family:<5} steps={cfg.steps}")
    return 0
