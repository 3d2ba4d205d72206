"""The HDF5 feature store (transition: everything still lives in writer.py)."""
from c3dfeat.store.writer import *  # noqa: F401,F403
from c3dfeat.store.writer import __all__, _lookup3, video_mean, RANDOM_INIT_WARNING, STATUS  # noqa: F401
