"""Input resolution: ids relative to the root, list files with labels, duplicates, shards."""
from pathlib import Path

import pytest

from c3dfeat.errors import ConfigError, InputError, NoVideosError
from c3dfeat.inputs import VideoInput, parse_shard, read_list_file, resolve_inputs, shard


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "videos"
    for rel in ["a/x.mp4", "b/x.mp4", "b/deep/y.AVI", "ü dir/my clip.mkv", "a/notes.txt", "a/.hidden.mp4",
                ".cache/z.mp4", "a/readme.md"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return root


def ids(items):
    return [v.id for v in items]


def test_directory_recursive_ids_are_relative_posix_paths(tree):
    got = resolve_inputs([tree])
    assert ids(got) == ["a/x.mp4", "b/deep/y.AVI", "b/x.mp4", "ü dir/my clip.mkv"]  # same basenames differ
    assert all(isinstance(v, VideoInput) and v.path.is_absolute() and v.label is None for v in got)
    assert got[0].path == tree / "a" / "x.mp4"


def test_symlink_cycle_terminates(tree):
    (tree / "a" / "loop").symlink_to(tree, target_is_directory=True)
    assert ids(resolve_inputs([tree])) == ["a/x.mp4", "b/deep/y.AVI", "b/x.mp4", "ü dir/my clip.mkv"]


def test_several_arguments_share_one_root(tree):
    got = resolve_inputs([tree / "a" / "x.mp4", tree / "b"])
    assert ids(got) == ["a/x.mp4", "b/deep/y.AVI", "b/x.mp4"]
    assert ids(resolve_inputs([tree / "a" / "x.mp4"])) == ["x.mp4"]
    assert ids(resolve_inputs([tree / "b"], root=tree)) == ["b/deep/y.AVI", "b/x.mp4"]
    with pytest.raises(InputError, match="not inside the input root"):
        resolve_inputs([tree / "b"], root=tree / "a")


def test_duplicates_are_extracted_once(tree):
    x = tree / "a" / "x.mp4"
    got = resolve_inputs([x, tree, str(tree / "a" / ".." / "a" / "x.mp4")])
    assert ids(got) == ["a/x.mp4", "b/deep/y.AVI", "b/x.mp4", "ü dir/my clip.mkv"]


def test_list_file_rules(tree):
    lst = tree / "list.txt"
    lst.write_text(
        "# comment\n"
        "\n"
        "a/x.mp4 1\n"  # UCF101 style: whitespace + label
        "b/x.mp4,2\n"  # CSV style
        "ü dir/my clip.mkv\n"  # spaces in the path, ends with a video extension: no label
        "b/deep/y.AVI\tjump rope\n"  # tab: everything after the last tab is the label
        "missing/file.mp4 7\n"  # kept: extraction records it as failed
        "a/x.mp4 1\n",  # duplicate with the same label: once
        encoding="utf-8",
    )
    got = resolve_inputs([lst])
    assert [(v.id, v.label) for v in got] == [
        ("a/x.mp4", "1"),
        ("b/deep/y.AVI", "jump rope"),
        ("b/x.mp4", "2"),
        ("missing/file.mp4", "7"),
        ("ü dir/my clip.mkv", None),
    ]
    assert got[3].path == tree / "missing" / "file.mp4"


def test_list_file_header_absolute_paths_and_existing_names_with_spaces(tree, tmp_path):
    odd = tree / "a" / "clip 2"  # no extension, name ends like a label: exists -> whole line is the path
    odd.write_bytes(b"")
    lst = tmp_path / "l.csv"
    lst.write_text(f"path,label\n{tree / 'a' / 'x.mp4'},run\n{odd}\n\"b/x.mp4\",2\n")
    assert read_list_file(lst) == [(tree / "a" / "x.mp4", "run"), (odd, None), (tmp_path / "b" / "x.mp4", "2")]


def test_conflicting_labels_and_missing_inputs(tree):
    lst = tree / "l.txt"
    lst.write_text("a/x.mp4 1\na/x.mp4 2\n")
    with pytest.raises(InputError, match="different labels"):
        resolve_inputs([lst])
    with pytest.raises(InputError, match="does not exist"):
        resolve_inputs([tree / "nope"])
    with pytest.raises(InputError, match="no inputs"):
        resolve_inputs([])
    bad = tree / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(InputError, match="UTF-8"):
        resolve_inputs([bad])


def test_no_video_found_names_inputs_and_extensions(tmp_path):
    empty, others = tmp_path / "empty", tmp_path / "others"
    empty.mkdir()
    (others / ".hidden").mkdir(parents=True)
    (others / "notes.md").write_text("x")
    (others / ".hidden" / "v.mp4").write_bytes(b"")  # hidden folders are skipped
    lst = tmp_path / "list.txt"
    lst.write_text("# only a comment\n\n")
    for args in ([empty], [others], [lst], [empty, lst]):
        with pytest.raises(NoVideosError) as e:
            resolve_inputs(args)
        msg = str(e.value)
        assert all(str(a) in msg for a in args) and ".mp4" in msg and ".avi" in msg and ".txt" in msg
        assert "\n" not in msg
    assert issubclass(NoVideosError, InputError)  # callers catching InputError keep working


def test_non_video_file_given_explicitly_is_kept(tree):
    # a file named explicitly is a video whatever its extension (it fails later, recorded)
    assert ids(resolve_inputs([tree / "a" / "readme.md"])) == ["readme.md"]


def test_shards_partition_deterministically():
    items = [VideoInput(f"class{i % 7}/v{i}.mp4", Path(f"/x/{i}.mp4")) for i in range(400)]
    parts = [shard(items, k, 4) for k in range(1, 5)]
    assert sorted(v.id for p in parts for v in p) == sorted(v.id for v in items)  # disjoint cover
    assert all(60 <= len(p) <= 140 for p in parts)
    assert shard(items, 2, 4) == parts[1]  # deterministic
    # membership depends on the id only: adding videos does not move the others
    more = items + [VideoInput(f"new/{i}.mp4", Path("/n")) for i in range(50)]
    assert set(v.id for v in parts[0]) <= set(v.id for v in shard(more, 1, 4))
    assert shard(["a", "b"], 1, 1) == ["a", "b"]
    # golden: sha1("a") = 86f7e437faa5a7fce15d1ddcb9eaeaea377667b8 -> 0x86f7e437faa5a7fc is even
    assert shard(["a"], 1, 2) == ["a"]


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4)
    assert parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/4", "5/4", "1/0", "a/b", "1-4"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    with pytest.raises(ConfigError):
        shard([], 0, 3)
