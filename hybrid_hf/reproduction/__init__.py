"""The package's own small-scale reproduction of the paper's claims (Large-Window Laziness, the NoPE gain,
convergence of hybrids): study settings and one training run (``study``), claim tests and the report
(``report``). ``benchmarks/reproduction/run.py`` is the command-line front end."""

from .report import analyse, load_runs, loss_statement, write_report
from .study import (
           ARMS,
           MODEL_SIZES,
           PROFILES,
           SWA_ARMS,
           CheckpointProbe,
           StudySettings,
           batch_function,
           model_config,
           prepare,
           run_arm,
           settings_for,
)

__all__ = ["ARMS", "MODEL_SIZES", "PROFILES", "SWA_ARMS", "CheckpointProbe", "StudySettings", "analyse", "batch_function", "load_runs",
           "loss_statement", "model_config", "prepare", "run_arm", "settings_for", "write_report"]
