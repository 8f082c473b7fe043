"""`mmfuser-llava train ARGS`, SIGKILLed once at the moment named by `$KILL_AT` (the kill tests' fault hook).

It lives with the tests, not in the package: it patches the Trainer and transformers' weights writer from outside.
- `step:N`: before the step after step N (between two steps);
- `save:N`: while `checkpoint-N`'s model.safetensors is being written (half of it is on the disk);
- `final`: while the final output's model.safetensors is being written.
"""

import os
import signal
import sys
from pathlib import Path

from transformers import modeling_utils

from modeling_mmfuser_llava.cli import main
from modeling_mmfuser_llava.training.trainer import MMFuserTrainer

moment, _, number = os.environ["KILL_AT"].partition(":")


def kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if moment == "step":
    training_step = MMFuserTrainer.training_step

    def training_step_then_kill(self, *args, **kwargs):
        if self.state.global_step == int(number):
            kill()
        return training_step(self, *args, **kwargs)

    MMFuserTrainer.training_step = training_step_then_kill
else:
    write_weights = modeling_utils.safe_save_file

    def write_half_then_kill(tensors, filename, *args, **kwargs):
        write_weights(tensors, filename, *args, **kwargs)
        in_checkpoint = any(part.startswith("checkpoint-") for part in Path(filename).parts)
        if (moment == "save" and f"checkpoint-{number}" in Path(filename).parts) or (
            moment == "final" and not in_checkpoint
        ):
            path = Path(filename)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            kill()

    modeling_utils.safe_save_file = write_half_then_kill

raise SystemExit(main(["train", *sys.argv[1:]]))
