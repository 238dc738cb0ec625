"""Callbacks: hooks `fit` calls at train, epoch and batch boundaries.

`fit` calls, in order: ``on_train_begin(logs)`` (logs: ``epochs``, ``steps``,
``metrics``, ``validation`` and ``added``, the names callbacks add: see `recorded_names`), then per
epoch ``on_epoch_begin``, per step
``on_batch_begin``/``on_batch_end`` (logs: ``loss`` as a 0-d array on the
device, ``size``), with ``on_backward()`` (the batch's gradients, before the gradient
transforms) and ``on_gradients(grads)`` (those the update applies) between them,
``on_epoch_end`` (logs: floats; what a callback adds to them
is recorded in the History), and ``on_train_end`` (logs: the last epoch's, ``history`` and ``failed``), which
runs on every exit (an error or Ctrl-C included). Setting
``model.stop_training = True`` stops after the current step.

The ``epoch`` the hooks receive is an index counting from 0 over the model's whole
training (``model.epochs_trained`` before the epoch); what is printed for people
counts from 1 ("epoch 1" is the first), as the progress bar does.
Callbacks that add entries to the epoch logs (``adds_logs = True``, or the tuple of names they add, as
`LearningRateScheduler`'s ``("lr",)``) get ``on_epoch_end`` before the others, so a
`CSVLogger` or `EarlyStopping` listed before them still sees those entries.

Callbacks that watch a metric (`EarlyStopping`, `ModelCheckpoint`) check at the
start of training that it will be recorded and raise `ValueError` otherwise.
"""


from .base import Callback, CallbackList
from .checkpoint import ModelCheckpoint
from .csv_logger import CSVLogger
from .gradients import GRADIENT_STATS, GradientAnalyzer
from .monitor import check_monitor, recorded_names
from .plateau import ReduceLROnPlateau
from .progress import ProgressBar
from .schedules import CosineDecay, ExponentialDecay, LearningRateScheduler, Schedule, StepDecay
from .stopping import EarlyStopping, TerminateOnNaN

__all__ = [
    "Callback", "CallbackList", "CSVLogger", "CosineDecay", "EarlyStopping", "ExponentialDecay",
    "GRADIENT_STATS", "GradientAnalyzer", "LearningRateScheduler", "ModelCheckpoint", "ProgressBar",
    "ReduceLROnPlateau", "Schedule", "StepDecay", "TerminateOnNaN", "check_monitor", "recorded_names",
]
