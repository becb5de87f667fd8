#!/usr/bin/env python
"""Build a Hugging Face DatasetDict of flows from captures (thin CLI over `mmae_hf.traffic.build_dataset`).

Examples:
    # a tree <label>/**/*.pcap[ng], split by capture file
    python dataset_scripts/build_dataset.py --input captures/ --output data/my-traffic --split-by file
    # a CSV manifest (file,label[,group])
    python dataset_scripts/build_dataset.py --input manifest.csv --output data/my-traffic
    # a public dataset of the MMAE paper, from the publisher's raw files
    python dataset_scripts/build_dataset.py --recipe iscx-vpn2016 --input raw/ISCXVPN2016 --output data/iscx-vpn

Exit status: 0 on success, 2 on a bad argument or input (one line on stderr naming the file and the problem;
--debug shows the traceback). Progress bars are drawn only when stderr is a terminal (--no-progress: never).
"""

import argparse
import re
import json
import shlex
import sys
from pathlib import Path


def _flow_option(text):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def parse_args(argv=None):
    from mmae_hf.traffic import ANONYMIZATION_PROFILES
    from mmae_hf.traffic.recipes import RECIPES
    from mmae_hf.traffic.splits import SPLIT_METHODS

    from mmae_hf.argparsing import ArgumentParser

    p = ArgumentParser(prog="build_dataset.py", description=__doc__)
    p.add_argument(
        "--input", required=True, help="folder <label>/**/*.pcap[ng], a CSV manifest, or a recipe's raw folder"
    )
    p.add_argument("--output", help="output folder (save_to_disk + README.md + build_report.json)")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="a public dataset's label map, caps and flow options")
    p.add_argument("--manifest", help="CSV manifest (file,label[,group]); paths relative to --input")
    p.add_argument("--file-column", default="file")
    p.add_argument("--label-column", default="label")
    p.add_argument("--group-column", help="manifest column holding the split group (default: 'group' or the file)")
    p.add_argument(
        "--seen-column",
        help="manifest column (e.g. an app name) whose every value in validation/test "
        "captures must also be in train captures: tests known services in new captures",
    )
    p.add_argument("--split-by", choices=SPLIT_METHODS, help="flow | file (= group) | time (default: file)")
    p.add_argument(
        "--validation-size", type=float, default=0.1, help="share of the groups (or flows) held out for validation"
    )
    p.add_argument("--test-size", type=float, default=0.1, help="share of the groups (or flows) held out for test")
    p.add_argument("--seed", type=int, default=0, help="drives the split and the per-class sampling")
    p.add_argument(
        "--num-proc",
        type=int,
        default=1,
        help="worker processes reading captures (>= 1; capped at the number of captures and CPUs)",
    )
    p.add_argument("--anonymize", choices=ANONYMIZATION_PROFILES)
    p.add_argument("--min-packets", type=int, help="drop flows with fewer packets")
    p.add_argument(
        "--max-packets",
        type=int,
        help="keep only the first N packets of each flow (0: all; default: the recipe's per-class caps, else all)",
    )
    p.add_argument(
        "--drop-service-chatter",
        action="store_true",
        default=None,
        help="drop DNS, mDNS, LLMNR, NBNS, DHCP, NTP, SSDP packets (well-known ports)",
    )
    p.add_argument(
        "--flow-option",
        type=_flow_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any FlowOptions field, e.g. bidirectional=false or idle_timeout=60 (repeatable)",
    )
    p.add_argument("--min-flows-per-class", type=int, help="drop classes with fewer flows")
    p.add_argument("--max-flows-per-class", type=int, help="seeded sample of at most this many flows per class")
    p.add_argument("--no-dedup", action="store_true", help="keep exact duplicate payloads")
    p.add_argument(
        "--drop-label-conflicts",
        action="store_true",
        help="remove every flow whose payload also occurs with another label",
    )
    p.add_argument("--keep-addresses", action="store_true", help="add src_ip, dst_ip, src_port, dst_port columns")
    p.add_argument("--strict", action="store_true", help="stop at the first damaged capture")
    p.add_argument(
        "--max-memory-mb", type=int, default=2048, help="flow columns kept in memory before spilling to the work folder"
    )
    p.add_argument("--tmp-dir", help="work folder location (default: inside --output)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty output folder (kept until the new dataset is complete)",
    )
    p.add_argument("--push-to-hub", metavar="REPO", help="publish to this Hub dataset repo")
    p.add_argument("--private", action="store_true")
    p.add_argument(
        "--license",
        metavar="ID",
        help="the captures' license as a Hub license id (cc0-1.0, cc-by-4.0, other, ...), written to the dataset "
        "card (default: unknown, with a line asking for it before publishing)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (drawn only on a terminal anyway)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = p.parse_args(argv)
    if not args.output and not args.push_to_hub:
        p.error("give --output and/or --push-to-hub")
    if not (0 <= args.validation_size < 1 and 0 <= args.test_size < 1 and args.validation_size + args.test_size < 1):
        p.error("--validation-size and --test-size must be in [0, 1) and sum to less than 1")
    if args.num_proc < 1:
        p.error(f"--num-proc must be >= 1 (got {args.num_proc})")
    # a Hub license id is lowercase letters, digits, dots and dashes (cc-by-4.0, apache-2.0, other): a typo such as
    # "CC BY 4.0" would otherwise land in the card and be refused only when the dataset is pushed
    if args.license is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", args.license):
        p.error(f"--license {args.license!r}: give a Hub license id such as cc0-1.0, cc-by-4.0, apache-2.0 or other")
    return args


def main(argv=None):
    from mmae_hf.traffic.atomic import run_interruptible

    # Ctrl-C / SIGTERM: one line, exit 130 / 143; the build removes its staging folder on the way out
    return run_interruptible(
        lambda: _checked_main(argv), "build_dataset.py", "nothing was written (an existing output folder is unchanged)"
    )


def _checked_main(argv=None):
    from mmae_hf.checks import run_main

    args = parse_args(argv)
    return run_main("build_dataset.py", lambda: _main(args, argv), debug=args.debug)


def _main(args, argv):
    from mmae_hf.progress import progress_wanted, set_library_progress_bars
    from mmae_hf.traffic.dataset import build_dataset

    args.progress = progress_wanted(args.no_progress)
    set_library_progress_bars(args.progress)
    result = _build(args, argv, build_dataset)  # bad input raises ValueError / OSError: one line, exit 2
    report = result.report
    special = report["input"].get("special_files_skipped")
    if special:
        print(
            f"skipped {len(special)} input(s) that are not regular files (never opened): "
            + ", ".join(f"{s['file']} ({s['kind']})" for s in special[:5])
            + (" ..." if len(special) > 5 else "")
        )
    from mmae_hf.traffic.card import class_count_table

    print(class_count_table(report))
    print(
        f"flows: {report['flows']['extracted']} extracted, {report['flows']['removed_duplicates']} duplicates removed, "
        f"{report['flows']['final']} kept; packets skipped: {report['packets']['skipped']}; "
        f"errors: {len(report['errors'])}; {report['timing_seconds']['total']:.1f} s"
    )
    if args.output:
        print(
            f"saved to {Path(args.output)} (load with mmae_hf.traffic.dataset.load_traffic_dataset or datasets.load_from_disk)"
        )
    return 0


def _build(args, argv, build_dataset):
    from mmae_hf.traffic.dataset import BuildOptions

    options = BuildOptions(
        manifest=args.manifest,
        recipe=args.recipe,
        file_column=args.file_column,
        label_column=args.label_column,
        group_column=args.group_column,
        seen_column=args.seen_column,
        split_by=args.split_by,
        validation_size=args.validation_size,
        test_size=args.test_size,
        seed=args.seed,
        flow_options=dict(args.flow_option) or None,
        anonymize=args.anonymize,
        min_packets=args.min_packets,
        drop_service_chatter=args.drop_service_chatter,
        max_packets=args.max_packets,
        min_flows_per_class=args.min_flows_per_class,
        max_flows_per_class=args.max_flows_per_class,
        dedup=not args.no_dedup,
        drop_label_conflicts=args.drop_label_conflicts,
        keep_addresses=args.keep_addresses,
        num_proc=args.num_proc,
        strict=args.strict,
        progress=args.progress,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        private=args.private,
        license=args.license,
        max_memory_mb=args.max_memory_mb,
        tmp_dir=args.tmp_dir,
        command=shlex.join(["build_dataset.py", *(sys.argv[1:] if argv is None else argv)]),
    )
    return build_dataset(args.input, args.output, options)


if __name__ == "__main__":
    sys.exit(main())
