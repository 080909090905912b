"""
The Lightman comparison ("Let's Verify Step by Step", Lightman et al., arXiv 2305.20050, figure 3): best-of-N by
each verifier against majority vote, N = 1..64, on held-out problems where the policy has headroom. There a PRM
picked 78.2% at N = 1860, an ORM 72.4%, majority vote 69.6%. Here the verifiers are the stage's (train_prm.py):
the generative verifier (ckpt.pt), the PRM on exact labels and the ORM. Each task is one run of benchmarks/genrm.py;
this script draws both runs' curves in one figure.

    python -m benchmarks.genrm --task arith --verifier runs/tiny/prm/ckpt.pt --samples 64 --out runs/lightman_arith
    python -m benchmarks.genrm --task countdown --difficulties 4 --verifier runs/tiny/prm/ckpt.pt --samples 64 \\
        --out runs/lightman_countdown
    python -m benchmarks.lightman runs/lightman_arith runs/lightman_countdown --out docs/lightman.png

Arith is measured on 3 and 4 operations: the reasoner never trained past 4, and at 5 and 6 it solves 5% and 0% of
40 problems greedily, 7.5% and 2.5% with any of 8 samples (docs/verifiers_log.md), so no verifier has anything to
pick there.
"""
import argparse
import json
import os

from nano_reasoner.report import plot_panels

SHOWN = {"generative verifier": "best-of-N, generative verifier", "weighted vote (generative verifier)":
         "weighted vote, generative verifier", "PRM (min)": "best-of-N, PRM", "ORM": "best-of-N, ORM",
         "majority vote": "majority vote", "pass@N (exact)": "pass@N", "greedy": "greedy"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="folders of benchmarks/genrm.py runs (each holds genrm.json)")
    parser.add_argument("--out", default="docs/lightman.png")
    args = parser.parse_args()
    panels = []
    for run in args.runs:
        with open(os.path.join(run, "genrm.json")) as f:
            result = json.load(f)
        curves = result["curves"]
        ns = list(range(1, len(curves["greedy"]) + 1))
        panels.append({"title": result.get("title", os.path.basename(os.path.normpath(run))),
                       "xlabel": "N (samples per problem)", "ylabel": "held-out accuracy", "logx": True,
                       "series": {SHOWN[name]: (ns, ys) for name, ys in curves.items() if name in SHOWN}})
    plot_panels(args.out, panels, title="choosing among N samples of the reasoner")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
