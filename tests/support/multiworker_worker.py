"""One worker of the 2-process MultiWorkerMirroredStrategy test (configured by TF_CONFIG).

Usage: python tests/support/multiworker_worker.py OUTPUT_NPZ
Trains a self-regulated LeNet-5 teacher for 2 epochs on the first 600 MNIST
examples; the chief writes its participation counts, a brute-force recount of
every gate and the per-epoch participation fractions to OUTPUT_NPZ.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tf_srkd.cli import environment  # pylint: disable=g-import-not-at-top
from tf_srkd.cli import strategy as strategy_lib  # pylint: disable=g-import-not-at-top

environment.skip_the_final_collection()

STRATEGY = strategy_lib.make_strategy("multi_worker")

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from tests.support.recount import BruteForceRecount  # pylint: disable=g-import-not-at-top
from tf_srkd.core import callbacks  # pylint: disable=g-import-not-at-top
from tf_srkd.data import arrays as data  # pylint: disable=g-import-not-at-top
from tf_srkd.data import datasets  # pylint: disable=g-import-not-at-top
from tf_srkd.models import zoo as models  # pylint: disable=g-import-not-at-top
from tf_srkd.core import training  # pylint: disable=g-import-not-at-top

N, BATCH, SEED, ALPHA, EPOCHS = 600, 100, 5, 0.5, 2


def main(output):
  split = data.load_split(datasets.get_dataset_spec("mnist"), "train", N)
  keras.utils.set_random_seed(SEED)
  with STRATEGY.scope():
    network = models.build_model("lenet5", (28, 28, 1), 10)
    model = training.SelfRegulatedModel(network, N, backward="masked")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
    model.optimizer.build(network.trainable_variables)
  recount = BruteForceRecount(split, BATCH, SEED, ALPHA, EPOCHS)
  history = model.fit(data.train_dataset(split, BATCH, SEED, 0, EPOCHS), epochs=EPOCHS,
                      steps_per_epoch=data.steps_per_epoch(N, BATCH), verbose=0,
                      callbacks=[callbacks.RegulationSchedule(ALPHA, N), recount])
  counts = model.participation_counts()  # A collective: every worker reads.
  if strategy_lib.is_chief(STRATEGY):
    np.savez(output, counts=counts, recount=recount.counts, per_epoch=np.array(recount.per_epoch),
             fractions=np.array(history.history["participation_fraction"]),
             replicas=STRATEGY.num_replicas_in_sync)


if __name__ == "__main__":
  main(sys.argv[1])
