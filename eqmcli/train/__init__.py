"""The training core behind `eqm train` and `eqm bench train`.

    step.py        train_step: the one optimizer step both commands run
    setup.py       Run: data, model, optimizer, schedule, built once (set_up, start)
    resume.py      what last.pt/best.pt hold; saving; restoring a run from one
    pretrained.py  model.init_from: a start from another run's weights (fine-tuning)
    schedule.py    learning-rate schedules
    run_state.py   the run directory (lock, --force, --resume checks) and metrics.jsonl
    trainer.py     train(): set up -> restore -> epochs -> evaluate -> checkpoint
    evaluation.py  verification during training; sampler.py the per-epoch sample order;
    interrupts.py  Ctrl-C / SIGTERM; progress.py the console
    tensorboard.py metrics.jsonl's records as TensorBoard scalars (train.tensorboard)
"""

from eqmcli.train.step import StepParts, train_step
from eqmcli.train.trainer import TrainSummary, train

__all__ = ["StepParts", "TrainSummary", "train", "train_step"]
