"""Command-line interface: thin click commands over the Python API.

One module per command group, each registering itself on the root group (`root.py`). Command
modules import torch-heavy code inside their command bodies only: `c3dfeat --help` must not
import torch.
"""
from c3dfeat.cli import (
    env_cmd as env_cmd,  # registers `env`
    eval_cmd as eval_cmd,  # registers `linear-eval`, `pca`, `tsne`
    extract_cmd as extract_cmd,  # registers `extract`
    file_cmd as file_cmd,  # registers `info`, `merge`, `repair`, `export`
    models_cmd as models_cmd,  # registers `models`
    weights_cmd as weights_cmd,  # registers `weights`
)
from c3dfeat.cli.root import UsageError as UsageError, cli as cli, main as main

__all__ = ["cli", "main", "UsageError"]
