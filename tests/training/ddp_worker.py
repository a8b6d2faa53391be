"""Run by torchrun in test_ddp: one training run, configured by a JSON argument."""

import json
import sys

from compacter.training import TrainConfig, train

if __name__ == "__main__":
    train(TrainConfig(**json.loads(sys.argv[1])), log=lambda *a: None)
