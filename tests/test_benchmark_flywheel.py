"""B1 (benchmarks/flywheel.py) at toy sizes: every arm runs (arms 1-5 through real agents, gRPC,
run_round, retrain and hot-swap), and flywheel.json / .png / .md have the documented shape."""

import json

from benchmarks import flywheel
from benchmarks.flywheel_arms import DEFAULT_ARMS
from conftest import DATA_DIR

RECORD_KEYS = {"round", "labels", "labels_acquired", "accuracy", "novel_class_accuracy", "bytes_uploaded",
               "jpeg_bytes_uploaded", "frames_seen", "frames_uploaded", "selection"}
SELECTION_KEYS = {"diversity", "coverage", "balance", "true_class_balance", "picks", "picks_repeating_an_item"}
HEADLINE_KEYS = {"labels_ratio_vs_random", "labels_ratio_vs_random_with_seed", "min_accuracy_gap_vs_random",
                 "bytes_fraction_of_all_frames", "accuracy_fraction_of_all_labeled", "novel_class_gap_closed"}


def test_tiny_b1_writes_every_arm_and_the_headline(tmp_path, fashion_train):
    out = tmp_path / "bench"
    assert flywheel.main(["--devices", "2", "--rounds", "2", "--items", "12", "--select", "6", "--seeds", "1",
                          "--test-size", "200", "--noise-seeds", "2", "--dataset", str(DATA_DIR),
                          "--out", str(out)]) == 0
    result = json.loads((out / "flywheel.json").read_text())
    assert (out / "flywheel.png").stat().st_size > 10_000
    md = (out / "flywheel.md").read_text()
    assert "labels_ratio_vs_random" in md and "python -m benchmarks.flywheel" in md

    assert list(result["arms"]) == list(DEFAULT_ARMS)
    assert [a for a, spec in result["arms"].items() if not spec["streams_through_agents"]] == [
        "6_skal_uncertainty", "6_skal_typiclust", "6_skal_coreset", "7_all_labeled"]
    assert result["config"]["novel_class"] == "Bag" and result["config"]["join_round"] == 2
    for arm, seeds in result["runs"].items():
        assert len(seeds) == 1
        records = seeds[0]
        assert [r["round"] for r in records] == [0, 1, 2]
        for r in records:
            assert RECORD_KEYS <= set(r), (arm, set(RECORD_KEYS) - set(r))
            assert 0 < r["accuracy"] <= 1
        assert records[0]["labels"] == 90 and records[0]["labels_acquired"] == 0
        assert records[2]["labels"] > records[0]["labels"]
        assert records[2]["frames_seen"] > records[1]["frames_seen"] > 0
        if arm != "7_all_labeled":
            assert SELECTION_KEYS <= set(records[1]["selection"]), arm
        if result["arms"][arm]["streams_through_agents"]:
            assert 0 < records[2]["frames_uploaded"] < records[2]["frames_seen"]
            assert records[2]["model_version"] == 3  # two retrains, both pushed and hot-swapped
        else:
            assert records[2]["frames_uploaded"] == records[2]["frames_seen"]
    # the same frames for every arm
    assert len({seeds[0][2]["frames_seen"] for seeds in result["runs"].values()}) == 1

    headline = result["headline"]
    assert HEADLINE_KEYS <= set(headline)
    for name in HEADLINE_KEYS:
        assert {"mean", "std", "per_seed"} <= set(headline[name])
    assert 0 < headline["bytes_fraction_of_all_frames"]["mean"] < 1
    assert headline["min_accuracy_gap_vs_random"]["meets_target"] in (True, False)
    noise = result["training_noise"]
    assert noise["seeds"] == 2 and noise["std"] >= 0 and noise["epochs"] > 0
    assert set(result["arms_summary"]) == set(DEFAULT_ARMS)


def test_digits_imagefolder_is_a_second_dataset_b1_reads(tmp_path):
    from benchmarks.digits_imagefolder import main as write_digits
    from benchmarks.flywheel_data import load_data

    assert write_digits([str(tmp_path / "digits")]) == 0
    data = load_data(tmp_path / "digits", image_size=32)
    assert data.classes == tuple(str(d) for d in range(10))
    assert (len(data.train), len(data.test)) == (1258, 539)  # the stratified 70/30 split of 1,797 scans
    assert data.train.images.shape[1:3] == (32, 32) and data.train.images.max() > 200
    assert write_digits([str(tmp_path / "digits")]) == 1  # refuses to write into a non-empty directory
