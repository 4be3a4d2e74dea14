"""MQTTset loader: labels from folders, the benign-5mb overlap rule, its split, refusals."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from datahelp import expect_error, write

from ztfm.data.bundled import bundled_path
from ztfm.data.mqttset import load_mqttset, mqttset_split
from ztfm.detect.netfeatures import packet_featurizer

FLOOD = "mqttset/flood/flood-{}.pcap.gz"


def _tree(root: Path, folders: dict[str, tuple[str, ...]]) -> Path:
    for folder, parts in folders.items():
        (root / folder).mkdir(parents=True)
        for part in parts:
            shutil.copy(
                bundled_path(FLOOD.format(part)), root / folder / f"{folder}-{part}.pcap.gz"
            )
    return root


def test_bundled_labels_and_links() -> None:
    series = load_mqttset(bundled_path("mqttset/flood"), featurize=packet_featurizer())
    assert [s.meta["part"] for s in series] == ["test", "train"]
    assert all(s.y is not None and (s.y == 1).all() for s in series)
    assert all(s.meta["link"] == "sll" and s.segment == "mqtt" for s in series)


def test_legitimate_is_benign_and_split(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"legitimate": ("train", "test"), "slowite": ("test",)})
    series = load_mqttset(root, featurize=packet_featurizer())
    (unit,) = mqttset_split(series)
    assert unit.train.y is not None and (unit.train.y == 0).all() and len(unit.train) == 58
    assert unit.test.kinds is not None and set(unit.test.kinds) == {"benign", "slowite"}


def test_benign_5mb_alone_is_used(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"benign-5mb": ("train",)})
    (s,) = load_mqttset(root, featurize=packet_featurizer())
    assert s.y is not None and (s.y == 0).all() and s.meta["label"] == "benign"


def test_without_train_test_parts_falls_back_to_time_split(tmp_path: Path) -> None:
    (tmp_path / "benign").mkdir()
    shutil.copy(bundled_path(FLOOD.format("train")), tmp_path / "benign" / "all.pcap.gz")
    (unit,) = mqttset_split(load_mqttset(tmp_path, featurize=packet_featurizer()))
    assert len(unit.train) == 29 and len(unit.test) == 29


# --- negative ----------------------------------------------------------------------------------
def test_unknown_label_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"captures": ("train",)})
    expect_error(lambda: load_mqttset(root, featurize=packet_featurizer()), "not 'captures'")


def test_no_captures(tmp_path: Path) -> None:
    write(tmp_path / "benign" / "README.md", "x")
    expect_error(lambda: load_mqttset(tmp_path, featurize=packet_featurizer()), "no pcap")


def test_truncated_capture(tmp_path: Path) -> None:
    raw = gzip.decompress(bundled_path(FLOOD.format("test")).read_bytes())
    write(tmp_path / "flood" / "flood-test.pcap", raw[:-100])
    expect_error(lambda: load_mqttset(tmp_path, featurize=packet_featurizer()), "truncated")
    (s,) = load_mqttset(tmp_path, featurize=packet_featurizer(), on_truncated="stop")
    assert 0 < len(s) < 22  # the whole packets before the cut


def test_split_needs_benign_train(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"flood": ("train", "test"), "benign": ("test",)})
    series = load_mqttset(root, featurize=packet_featurizer())
    expect_error(lambda: mqttset_split(series), "no benign *-train")
