"""bench/decode.py --plot: tokens/s and the fraction of the bandwidth floor against batch size."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(result: dict, path: str) -> None:
    fig, (speed, fraction) = plt.subplots(1, 2, figsize=(13, 5))
    for name, run in result["runs"].items():
        for context in sorted({d["context"] for d in run["decode"]}):
            # one row a batch size: with --lookahead both, the second (looking ahead)
            rows = list({d["batch"]: d for d in run["decode"] if d["context"] == context}.values())
            batches = [d["batch"] for d in rows]
            line, = speed.plot(batches, [d["tokens_per_s"] for d in rows], "o-", label=f"{name} ctx {context}")
            speed.plot(batches, [d["batch"] / d["floor_ms"] * 1e3 for d in rows], ":", color=line.get_color(),
                       label=f"{name} ctx {context}: floor")
            fraction.plot(batches, [d["fraction_of_floor"] for d in rows], "o-", label=f"{name} ctx {context}")
    for name, rows in result.get("baselines", {}).items():
        speed.plot([d["batch"] for d in rows], [d["tokens_per_s"] for d in rows], "s--", label=f"baseline: {name}")
        if all("fraction_of_floor" in d for d in rows):
            fraction.plot([d["batch"] for d in rows], [d["fraction_of_floor"] for d in rows], "s--",
                          label=f"baseline: {name}")
    for ax, label in ((speed, "decode tokens/s"), (fraction, "fraction of the bandwidth floor")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    speed.set_yscale("log")
    fraction.set_ylim(0, 1.05)
    fig.suptitle(f"DBRX decode on {result['device']} (copy bandwidth {result['copy_bandwidth_gbs']} GB/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
