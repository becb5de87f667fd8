#!/usr/bin/env python
"""Build the unlabelled pre-training corpus (thin CLI over `mmae_hf.traffic.corpus.build_pretraining_corpus`).

    python dataset_scripts/build_corpus.py --input ../shared/data/public-captures --output outputs/corpus \
        --exclude-held-out outputs/ndpi-seen-apps outputs/ndpi-encrypted-services outputs/sample-traffic

Every capture that a validation or test flow of an --exclude-held-out dataset was cut from is left out, and every
corpus flow whose bytes equal such a flow's is removed; both are counted in corpus_report.json.
`bash dataset_scripts/build_corpus.sh` builds the development sets and then this corpus in one command.
"""

import argparse
import json
import shlex
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--input", nargs="+", required=True, help="corpus folder(s): <source>/**/*.pcap[ng] (+ manifest.csv)"
    )
    p.add_argument("--output", required=True, help="output folder (save_to_disk + corpus_report.json + README.md)")
    p.add_argument(
        "--exclude-held-out",
        nargs="*",
        default=[],
        metavar="DATASET",
        help="dataset folders whose validation/test flows (and their source captures) must stay out",
    )
    p.add_argument(
        "--include-train",
        nargs="*",
        default=[],
        metavar="DATASET",
        help="dataset folders whose train split is added as unlabelled flows",
    )
    p.add_argument("--anonymize", default="default", help="anonymisation profile (must match the evaluation sets)")
    p.add_argument("--validation-size", type=float, default=0.05, help="share of captures held out for diagnostics")
    p.add_argument("--max-flows-per-source", type=int, help="seeded cap on train flows per source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-proc", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mmae_hf.traffic.corpus import build_pretraining_corpus

    try:
        report = build_pretraining_corpus(
            args.input,
            args.output,
            evaluation_sets=args.exclude_held_out,
            include_train=args.include_train,
            anonymize=args.anonymize,
            validation_size=args.validation_size,
            seed=args.seed,
            num_proc=args.num_proc,
            max_flows_per_source=args.max_flows_per_source,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            command=shlex.join(["build_corpus.py", *(sys.argv[1:] if argv is None else argv)]),
        )
    except (ValueError, OSError) as error:
        print(f"build_corpus.py: error: {error}", file=sys.stderr)
        return 2
    print(f"corpus: {report['flows']} flows by split; by source: {json.dumps(report['flows_by_source'])}")
    print(
        f"kept out: {report['excluded_captures']} captures of held-out flows, "
        f"{report['removed_held_out_payloads']} flows equal to held-out flows; {report['seconds']} s"
    )
    print(f"saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
