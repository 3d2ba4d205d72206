"""Every option shared by several commands, defined once: same name, default and help everywhere.

Choices and defaults come from the library's own constants (torch-free modules only, so that
`--help` stays fast); tests/test_cli_options.py checks the defaults against `c3dfeat.extract`'s
signature. A command applies only the options it uses.
"""
from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import click

from c3dfeat.evaluate.choices import DATASETS, DEFAULT_CS, NORMS, SOLVERS
from c3dfeat.runtime import CPU_WORKERS, GPU_DECODE_WORKERS, MAX_DEFAULT_WORKERS
from c3dfeat.sampling import SamplingConfig
from c3dfeat.specs import COMPUTE_DTYPES, CROP_MODES, CROP_REDUCTIONS, WORKER_KINDS
from c3dfeat.video import BACKENDS, DECODE_DEVICES, parse_decode_device

F = TypeVar("F", bound=Callable[..., Any])

ENV_REQUIRE_HASHES = "C3DFEAT_REQUIRE_HASHES"
ENV_WEIGHTS_MIRROR = "C3DFEAT_WEIGHTS_MIRROR"
DEFAULT_FEATS = "feats.h5"  # the file `c3dfeat extract videos/ -o feats.h5` writes
TAILS = typing.get_args(typing.get_type_hints(SamplingConfig)["tail"])


def stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Apply several click decorators in the order they are listed (top = first in --help)."""

    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


class OutputFile(click.Path):
    """A file the command writes: its folder must exist (it is not created; a typo in a path
    should not silently make directories). Otherwise one line, exit code 2."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        path = super().convert(value, param, ctx)
        folder = Path(os.fsdecode(path)).parent
        if not folder.is_dir():
            from c3dfeat.cli.root import UsageError

            name = param.opts[0] if param is not None and param.opts else "output"
            raise UsageError(f"the folder of {name} {value} does not exist ({folder}); create it first "
                             "or choose another path")
        return path


class DecodeDevice(click.ParamType):
    """cpu, cuda or cuda:N (syntax only; whether this machine can decode there is checked by the
    library before the first video). Anything else: one line, exit code 2."""

    name = "decode_device"

    def get_metavar(self, param: click.Parameter, ctx: Optional[click.Context] = None) -> str:
        return "|".join(DECODE_DEVICES) + "[:N]"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        from c3dfeat.errors import ConfigError

        try:
            return parse_decode_device(value)
        except ConfigError:
            from c3dfeat.cli.root import UsageError

            raise UsageError(f"--decode-device must be {', '.join(DECODE_DEVICES)} or cuda:N, got {value!r}") from None


# --- where things run ----------------------------------------------------------------------------
device = click.option("--device", default="auto", show_default=True,
                      help="auto (the first GPU if any, else cpu, with a warning saying why when torch cannot use this "
                           "machine's GPU), cpu, cuda or cuda:N.")
dtype = click.option("--dtype", type=click.Choice(COMPUTE_DTYPES), default=COMPUTE_DTYPES[0],
                     show_default=True, help="Compute dtype (fp32 is exact).")
workers = click.option(
    "--workers", type=click.IntRange(min=1), default=None,
    help=f"Videos decoded at once (one decoder each). Default: {CPU_WORKERS} with the model on the CPU; "
         f"on a GPU the usable CPU cores per visible GPU less one ({CPU_WORKERS} to {MAX_DEFAULT_WORKERS}); "
         f"{GPU_DECODE_WORKERS} with --decode-device cuda.")
worker_kind = click.option(
    "--worker-kind", type=click.Choice(WORKER_KINDS), default=WORKER_KINDS[0], show_default=True,
    help="process: each decoder in its own forked process (no GIL shared: scales with cores; Linux); "
         "thread: in this process; auto: process for a model on a GPU or more than 4 workers, else thread.")
decoder = click.option("--decoder", type=click.Choice(BACKENDS), default="pyav", show_default=True,
                       help="Frame reader (decord's memory grows with video length; docs/extract.md).")
decode_device = click.option(
    "--decode-device", type=DecodeDevice(), default=DECODE_DEVICES[0], show_default=True,
    help="Where videos are DECODED (not --device, where the model runs): cuda[:N] uses the GPU's NVDEC "
         "and needs --decoder torchcodec built with CUDA; frames come back to the host for the "
         "transforms. Recorded: a file is resumed only with the same kind.")

# --- weights ---------------------------------------------------------------------------------------
weights_dir = click.option(
    "--weights-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Weights directory searched first (downloads go there too); search order: "
         "`c3dfeat weights --help`.")
require_hashes = click.option(
    "--require-hashes", is_flag=True, envvar=ENV_REQUIRE_HASHES, show_envvar=True,
    help="Refuse any checkpoint without a published SHA-256 (no trust on first use).")
weights_mirror = click.option(
    "--weights-mirror", metavar="URL", default=None, envvar=ENV_WEIGHTS_MIRROR, show_envvar=True,
    help="Base URL tried before the published ones: URL/<file name in `c3dfeat weights list`>.")
downloads = stack(weights_dir, require_hashes, weights_mirror)

# --- output ----------------------------------------------------------------------------------------
quiet = click.option("-q", "--quiet", is_flag=True, help="No progress display; only the summary and errors.")
as_json = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")

# --- sampling and crops (extract) -------------------------------------------------------------------
fps = click.option("--fps", type=click.FloatRange(min=0), default=None,
                   help="Resample the timeline to this rate (frame indices only, no re-encoding); "
                        "0 = the native rate, also for models whose spec resamples.")
tail = click.option("--tail", type=click.Choice(TAILS), default=TAILS[0], show_default=True,
                    help="Last partial clip: pad with the last frame, or drop it.")
_CROP_CHOICES = [str(c) for c in CROP_MODES]
crops = stack(
    click.option("--crops", "crops", type=click.Choice(_CROP_CHOICES), default=None,
                 help=f"Crop mode: {', '.join(_CROP_CHOICES)} (crops per clip).  [default: {CROP_MODES[0]}]"),
    click.option("--crop", "crop_deprecated", type=click.Choice(_CROP_CHOICES), default=None,
                 hidden=True, help="Deprecated spelling of --crops."),
)
crop_reduce = click.option("--crop-reduce", type=click.Choice(CROP_REDUCTIONS), default=CROP_REDUCTIONS[0],
                           show_default=True, help="Average the crops or keep each.")


def crop_mode(crops_value: Optional[str], deprecated: Optional[str]) -> Union[str, int]:
    """The API value of --crops (or its deprecated spelling --crop): "center", 3 or 10."""
    if crops_value is not None and deprecated is not None and crops_value != deprecated:
        raise click.BadParameter(f"--crops {crops_value} and --crop {deprecated} disagree; "
                                 "give --crops only", param_hint="--crops")
    value = crops_value or deprecated or str(CROP_MODES[0])
    return int(value) if value.isdigit() else value


# --- reading a feature file (linear-eval, pca, tsne, export) ---------------------------------------
feats_argument = click.argument("feats", required=False, default=None, type=click.Path(dir_okay=False))
model_in_file = click.option("--model", default=None,
                             help="Model in the file (default: the only one).")
layer_in_file = click.option("--layer", default=None,
                             help="Layer or alias, e.g. fc6 or final_avg (default: the first stored).")
norm = click.option("--norm", type=click.Choice(NORMS), default=NORMS[0],
                    show_default=True, help="Per-video normalisation of the clip-mean descriptor "
                                            "(l2 = the C3D paper's recipe).")
seed = click.option("--seed", type=int, default=0, show_default=True,
                    help="Seed of the folds, the solvers and the embeddings.")

# --- the linear SVM (linear-eval, pca) ------------------------------------------------------------
svm = stack(
    click.option("--C", "C", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Fix the SVM's C (default: chosen by CV on each training part)."),
    click.option("--C-grid", "C_grid", default=",".join(f"{c:g}" for c in DEFAULT_CS), show_default=True,
                 help="Comma-separated C values tried by the CV."),
    click.option("--cv-folds", type=click.IntRange(2, None), default=3, show_default=True,
                 help="Folds of the CV that chooses C (inside the training part)."),
    click.option("--solver", type=click.Choice(SOLVERS), default=SOLVERS[0], show_default=True,
                 help="torch: vectorised one-vs-rest solver (CPU/GPU); liblinear: scikit-learn "
                      "LinearSVC, the reference."),
)

# --- labels and splits -------------------------------------------------------------------------------
label_source = stack(
    click.option("--dataset", type=click.Choice(DATASETS), default=None,
                 help="Official lists: ucf101 (ucfTrainTestlist/) or hmdb51 "
                      "(testTrainMulti_7030_splits/); needs --splits."),
    click.option("--splits", "splits_dir", type=click.Path(exists=True, file_okay=False),
                 default=None, help="Folder with the official split lists."),
    click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False),
                 default=None, help="CSV of 'video,label' rows (instead of a dataset). "
                                    "Default: the labels in the file, else parent folders."),
)
split_choice = stack(
    click.option("--split", "split", type=int, multiple=True,
                 help="Evaluate only these official splits (1-3; repeatable). Default: all found."),
    click.option("--train-list", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="With --labels: ids of the training videos, one per line."),
    click.option("--test-list", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="With --labels: ids of the test videos, one per line."),
    click.option("--folds", type=click.IntRange(2, None), default=5, show_default=True,
                 help="Stratified k-fold CV when no split lists are given."),
    click.option("--allow-missing", is_flag=True,
                 help="Skip (and report) listed videos that are not in the feature file."),
)
