"""The pre-training corpus builder keeps every evaluation flow out (by capture and by payload) and says what it did."""

import json
import shutil

import numpy as np
import pytest

from dataset_pcaps import flow, make_tree, write_pcap

pytest.importorskip("scapy")


@pytest.fixture(scope="module")
def corpus_setup(tmp_path_factory):
    from mmae_hf.traffic.dataset import build_dataset

    root = tmp_path_factory.mktemp("corpus")
    labelled = make_tree(root / "labelled", {"app_a": 5, "app_b": 5}, flows_per_file=2)
    evaluation = root / "eval-set"
    build_dataset(labelled, evaluation, split_by="file", validation_size=0.2, test_size=0.2, seed=0, progress=False)
    from datasets import load_from_disk

    dsd = load_from_disk(str(evaluation))
    held_out = sorted({g for split in ("validation", "test") for g in dsd[split]["group"]})
    train_groups = sorted(set(dsd["train"]["group"]))

    # the public corpus: one source holds every labelled capture under its repository path (as public-captures does
    # for nDPI), another holds a renamed copy of one held-out capture, a third only unrelated traffic
    public = root / "public"
    rows = []
    for group in held_out + train_groups:
        name = "repo-a/" + group.replace("/", "__")
        (public / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(labelled / group, public / name)
        rows.append(("repo-a", group))
    (public / "repo-b").mkdir()
    shutil.copy(labelled / held_out[0], public / "repo-b" / "renamed-copy.pcap")
    rows.append(("repo-b", "renamed-copy.pcap"))
    for j in range(6):
        write_pcap(public / "repo-c" / f"other{j}.pcap", [flow(f"other/{j}/{i}", sport=50000 + i) for i in range(2)])
        rows.append(("repo-c", f"other{j}.pcap"))
    with open(public / "manifest.csv", "w") as handle:
        handle.write("source,path,license\n")
        for source, path in rows:
            handle.write(f"{source},{path},MIT\n")
    return {
        "root": root,
        "public": public,
        "evaluation": evaluation,
        "held_out": held_out,
        "train": train_groups,
        "dsd": dsd,
    }


def _identity_map(public):
    import csv

    with open(public / "manifest.csv") as handle:
        return {f"{r['source']}/{r['path'].replace('/', '__')}": r["path"] for r in csv.DictReader(handle)}


def test_corpus_excludes_held_out_captures_and_payloads(corpus_setup):
    from datasets import load_from_disk

    from mmae_hf.traffic.corpus import build_pretraining_corpus
    from mmae_hf.traffic.dataset import payload_digests

    out = corpus_setup["root"] / "corpus"
    report = build_pretraining_corpus(
        [corpus_setup["public"]],
        out,
        evaluation_sets=[corpus_setup["evaluation"]],
        validation_size=0.2,
        progress=False,
        seed=0,
    )
    corpus = load_from_disk(str(out))

    # (1) no capture a held-out flow was cut from is read
    identity = _identity_map(corpus_setup["public"])
    files = {f for split in corpus for f in corpus[split]["source_file"]}
    assert not {identity[f] for f in files} & set(corpus_setup["held_out"])
    assert {identity[f] for f in files} >= set(corpus_setup["train"])  # train captures stay in
    assert report["excluded_captures"] == len(corpus_setup["held_out"])
    assert report["held_out_captures_not_in_corpus"] == []

    # (2) the renamed copy of a held-out capture is read, but its flows equal held-out flows: removed by payload
    assert report["removed_held_out_payloads"] == 2
    assert report["removed_held_out_payloads_by_source"] == {"repo-b": 2}
    held = load_from_disk(str(corpus_setup["evaluation"]))
    held_digests = {
        row.tobytes()
        for s in ("validation", "test")
        for row in payload_digests(np.asarray(held[s]["input_bytes"], np.uint8))
    }
    for split in corpus:
        digests = payload_digests(np.asarray(corpus[split]["input_bytes"], np.uint8))
        assert not {row.tobytes() for row in digests} & held_digests

    # (3) unlabelled: the source is a string column, not a class; report, card and preprocessor config are there
    assert "label" not in corpus["train"].column_names
    assert set(corpus["train"]["source"]) <= {"repo-a", "repo-b", "repo-c"}
    assert corpus["train"].features["source"].dtype == "string"
    assert set(corpus) == {"train", "validation"} and len(corpus["validation"]) > 0
    saved = json.loads((out / "corpus_report.json").read_text())
    assert saved["removed_held_out_payloads"] == 2 and saved["flows"]["train"] == len(corpus["train"])
    assert "MMAE pre-training corpus" in (out / "README.md").read_text()
    assert (out / "preprocessor_config.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_corpus_refuses_an_evaluation_set_anonymised_differently(corpus_setup, tmp_path):
    from mmae_hf.traffic.corpus import build_pretraining_corpus

    with pytest.raises(ValueError, match="anonymised with 'default' but the corpus uses 'none'"):
        build_pretraining_corpus(
            [corpus_setup["public"]],
            tmp_path / "c",
            evaluation_sets=[corpus_setup["evaluation"]],
            anonymize="none",
            progress=False,
        )
    assert not (tmp_path / "c").exists()


def test_corpus_overwrite_keeps_the_old_corpus_until_the_new_one_is_complete(corpus_setup, tmp_path, monkeypatch):
    from mmae_hf.traffic import corpus as corpus_module

    out = tmp_path / "c"
    corpus_module.build_pretraining_corpus([corpus_setup["public"]], out, progress=False)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError):
        corpus_module.build_pretraining_corpus([corpus_setup["public"]], out, progress=False)

    def broken_card(report):
        raise OSError("No space left on device")

    monkeypatch.setattr(corpus_module, "corpus_card", broken_card)
    with pytest.raises(OSError, match="No space left"):
        corpus_module.build_pretraining_corpus([corpus_setup["public"]], out, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == before  # the old corpus is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no staging folder left behind
