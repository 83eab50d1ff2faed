"""Time and peak memory of a build (checkpoint -> engine): the per-group reading at work.

    python bench/build_memory.py --checkpoint_dir C --output_dir E [--workers N]

Make a checkpoint first, e.g. with bench/convert_memory.py's model and `dbrx convert`.
Prints one JSON line: seconds, the rank files' bytes, the RSS after imports, the
peak RSS of this process and of the largest worker process.
"""

import argparse
import json
import resource
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    from dbrx_serve.services.builder.build import build
    from dbrx_serve.services.builder.options import BuildOptions

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    build(BuildOptions(args.checkpoint_dir, args.output_dir, workers=args.workers))
    mib = 1024  # ru_maxrss is in KiB on Linux
    print(json.dumps({
        "seconds": round(time.perf_counter() - start, 1), "workers": args.workers,
        "rank_file_mib": [p.stat().st_size >> 20 for p in sorted(Path(args.checkpoint_dir).glob("rank*.safetensors"))],
        "baseline_rss_mib": baseline // mib,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // mib,
        "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // mib}))


if __name__ == "__main__":
    main()
