"""Labels and splits: parsers on fixture files in the official formats, id matching, k-fold."""
from pathlib import Path

import numpy as np
import pytest

from c3dfeat.errors import EvalError
from c3dfeat.evaluate.splits import (
    build_protocol,
    folder_labels,
    kfold_protocol,
    parse_generic,
    parse_hmdb51,
    parse_ucf101,
    resolve,
)

DATA = Path(__file__).parent / "data" / "splits"
UCF = DATA / "ucfTrainTestlist"
HMDB = DATA / "testTrainMulti_7030_splits"

UCF_IDS = [  # store ids as `c3dfeat extract UCF-101/` writes them: path relative to the root
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c02.avi",
    "ApplyLipstick/v_ApplyLipstick_g01_c01.avi",
    "ApplyLipstick/v_ApplyLipstick_g08_c01.avi",
    "ApplyLipstick/v_ApplyLipstick_g10_c03.avi",
    "Archery/v_Archery_g07_c04.avi",
    "Archery/v_Archery_g08_c01.avi",
    "Archery/v_Archery_g11_c04.avi",
]


def test_ucf101_parser_one_based_labels_and_test_labels_from_folder():
    lst = parse_ucf101(UCF)
    assert lst.classes == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    assert [s.name for s in lst.splits] == ["split1", "split2"]
    s1 = lst.splits[0]
    # "ApplyLipstick/... 2" in trainlist01 → 0-based class 1
    assert ("ApplyLipstick/v_ApplyLipstick_g08_c01.avi", 1) in s1.train
    assert s1.train[0] == ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0)
    assert len(s1.train) == 6 and len(s1.test) == 3
    assert s1.test == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0),
                       ("ApplyLipstick/v_ApplyLipstick_g01_c01.avi", 1),
                       ("Archery/v_Archery_g07_c04.avi", 2)]
    assert [s.name for s in parse_ucf101(UCF, [2]).splits] == ["split2"]


def test_ucf101_label_folder_conflict_is_an_error(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 A\n2 B\n")
    (tmp_path / "trainlist01.txt").write_text("A/v_A_g08_c01.avi 2\n")
    (tmp_path / "testlist01.txt").write_text("A/v_A_g01_c01.avi\n")
    with pytest.raises(EvalError, match="labelled 2"):
        parse_ucf101(tmp_path)
    with pytest.raises(EvalError, match="classInd.txt"):
        parse_ucf101(tmp_path / "nowhere")


def test_ucf101_resolve_rows():
    p = resolve(parse_ucf101(UCF), UCF_IDS)
    s1 = p.splits[0]
    assert sorted(UCF_IDS[i] for i in s1.test) == sorted(
        ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyLipstick/v_ApplyLipstick_g01_c01.avi",
         "Archery/v_Archery_g07_c04.avi"])
    assert len(s1.train) == 6 and not set(s1.train) & set(s1.test)
    assert p.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # split 2 swaps roles (train g01.., test g08..); g09 of ApplyEyeMakeup... is in test
    assert UCF_IDS.index("ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c02.avi") in p.splits[1].test


@pytest.mark.parametrize("fmt", [
    lambda p: p,                                          # ApplyEyeMakeup/v_X.avi
    lambda p: p.split("/")[1],                            # v_X.avi (no folder)
    lambda p: "videos/" + p.replace(".avi", ".mp4"),      # videos/ApplyEyeMakeup/v_X.mp4
    lambda p: "UCF-101\\" + p.replace("/", "\\"),         # Windows separators
    lambda p: p.rsplit(".", 1)[0],                        # no extension at all
    lambda p: p.upper(),                                  # another copy's letter case
])
def test_id_matching_ignores_extension_and_folder_prefix(fmt):
    ids = [fmt(v) for v in UCF_IDS]
    p = resolve(parse_ucf101(UCF, [1]), ids)
    assert p.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(p.splits[0].train) == 6 and len(p.splits[0].test) == 3


def test_matching_is_not_fooled_by_same_name_in_other_folder():
    ids = ["Other/v_ApplyEyeMakeup_g01_c01.avi"] + UCF_IDS[1:]
    with pytest.raises(EvalError, match=r"1 of 9 listed videos are not in the feature file"):
        resolve(parse_ucf101(UCF, [1]), ids)


def test_ambiguous_match_is_an_error():
    from c3dfeat.evaluate.splits import ListedSplit, Listing

    lst = Listing(["a"], [ListedSplit("s", [("x.avi", 0)], [("y.avi", 0)])], "t")
    with pytest.raises(EvalError, match="several videos"):
        resolve(lst, ["d1/x.avi", "d2/x.mp4", "y.avi"])


def test_missing_videos_error_with_counts_or_skipped():
    ids = [v for v in UCF_IDS if "g08" not in v]  # 3 videos (train of split 1) not extracted
    with pytest.raises(EvalError) as e:
        resolve(parse_ucf101(UCF), ids)
    msg = str(e.value)
    assert "6 of 18 listed videos" in msg and "split1: 3" in msg and "split2: 3" in msg
    assert "--allow-missing" in msg
    p = resolve(parse_ucf101(UCF), ids, allow_missing=True)
    assert len(p.splits[0].train) == 3 and len(p.missing["split1"]) == 3
    assert all("g08" in m for m in p.missing["split1"])


def test_nothing_matches_is_a_clear_error_even_with_allow_missing():
    with pytest.raises(EvalError, match="no listed training video"):
        resolve(parse_ucf101(UCF, [1]), ["foo/bar.avi"], allow_missing=True)


HMDB_IDS = [
    "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
    "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi",
    "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_2.avi",
    "brush_hair/Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi",
    "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi",
    "cartwheel/Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi",
    "cartwheel/Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi",
]


def test_hmdb51_parser_train_test_unused():
    lst = parse_hmdb51(HMDB)
    assert lst.classes == ["brush_hair", "cartwheel"]
    s1 = lst.splits[0]
    names = lambda entries: sorted(p.split("/")[1] for p, _ in entries)  # noqa: E731
    assert names(s1.train) == sorted(["April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
                                      "Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi",
                                      "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi",
                                      "Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi"])
    assert names(s1.test) == sorted(["April_09_brush_hair_u_nm_np1_ba_goo_1.avi",
                                     "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi"])
    # id 0 (unused) is in neither part
    assert not any("goo_2" in p for p, _ in s1.train + s1.test)
    p = resolve(lst, [v.split("/")[1] for v in HMDB_IDS])  # ids without the class folder
    assert p.y.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert len(p.splits[1].train) == 3 and len(p.splits[1].test) == 2


def test_hmdb51_bad_id_is_an_error(tmp_path):
    (tmp_path / "a_test_split1.txt").write_text("x.avi 3\n")
    with pytest.raises(EvalError, match="0\\|1\\|2"):
        parse_hmdb51(tmp_path)


def test_generic_csv_lists_and_kfold():
    lst, labels = parse_generic(DATA / "labels.csv", DATA / "train.txt", DATA / "test.txt")
    assert lst.classes == ["jump", "run", "walk"]
    assert labels["clips/b2.mp4"] == "run"
    ids = ["clips/a1.mp4", "clips/a2.mp4", "clips/b1.mp4", "clips/b2.mp4", "clips/c1.mp4",
           "clips/c2.mp4"]
    p = resolve(lst, ids)
    assert p.y.tolist() == [2, 2, 1, 1, 0, 0]
    assert sorted(p.splits[0].test.tolist()) == [1, 3, 5]
    # labels without lists: stratified k-fold over the labelled videos
    ids2 = [f"clips/{c}{i}.mp4" for c in "abc" for i in range(1, 5)]
    p = build_protocol(ids2, labels_csv=DATA / "labels.csv", folds=2)
    assert [s.name for s in p.splits] == ["fold1", "fold2"]
    labelled = np.flatnonzero(p.y >= 0)
    assert len(labelled) == 6  # a3, a4, ... have no label: not used
    for s in p.splits:
        assert sorted(np.concatenate([s.train, s.test]).tolist()) == labelled.tolist()


def test_folder_labels_kfold_is_stratified_and_covers_everything():
    ids = [f"{c}/clip{i}.avi" for c in ("left", "right", "up") for i in range(10)]
    assert folder_labels(ids)[:2] == ["left", "left"]
    p = build_protocol(ids, folds=5)
    assert p.classes == ["left", "right", "up"] and len(p.splits) == 5
    tests = np.concatenate([s.test for s in p.splits])
    assert sorted(tests.tolist()) == list(range(30))  # every video tested exactly once
    for s in p.splits:
        assert np.bincount(p.y[s.test]).tolist() == [2, 2, 2]
        assert not set(s.train) & set(s.test)


def test_no_labels_anywhere_is_a_clear_error():
    with pytest.raises(EvalError, match="no labels.*--dataset.*--labels"):
        build_protocol(["a.avi", "b.avi"])
    with pytest.raises(EvalError, match="--splits DIR"):
        build_protocol(["a/b.avi"], dataset="ucf101")
    with pytest.raises(EvalError, match="at least 5 videos per class"):
        kfold_protocol(["a/1", "a/2", "b/1", "b/2"], ["a", "a", "b", "b"], folds=5)
