"""The paper's two-stage recipe at toy scale, run through `mmfuser-llava train`'s own argument parsing and training.

Every compared model gets the same budget: the same base LLM and frozen CLIP, the same data, steps, batch size,
learning rates and seed; only the fuser's flags differ (`--fuser_fusion`, or a study's row: see `studies`).
"""

from dataclasses import dataclass
from pathlib import Path

from ..training import parse_arguments, run_training
from ..training.model_setup import MM_PROJECTOR_FILE
from . import FUSIONS
from .task import FILES, IMAGE_DIR

# The selected layers of the 8-layer tower, in proportion to the paper's CLIP-L layers 3/8/13/18 and 23 of 24:
# key/value layers 1, 3, 4 and 6, and the penultimate layer as the query, as in LLaVA-1.5.
SELECT_LAYERS = "list1/3/4/6/-2"
# 16-wide heads over the 64-wide tower (the paper: 64-wide heads over CLIP-L's 1024), 4 points as in the paper.
FUSER_HEADS = 4


@dataclass(frozen=True)
class RecipeBudget:
    """What every compared model gets. The paper's stage 1 is one epoch of 558K captions (2,180 steps); 4,000
    captions need several epochs for the fuser and projector to align with the LLM. Its stage-2 learning rate (2e-5)
    is for a 7B LLM; the 2-layer toy LLM takes a larger one."""

    stage1_epochs: float = 8
    stage2_epochs: float = 3
    batch_size: int = 32
    stage1_learning_rate: float = 1e-3
    stage2_learning_rate: float = 2e-3
    max_steps: int = -1  # a cap for quick runs (tests); -1: the epochs decide

    def stage_flags(self, stage: int) -> list[str]:
        epochs, learning_rate = (
            (self.stage1_epochs, self.stage1_learning_rate) if stage == 1 else (self.stage2_epochs,
                                                                                 self.stage2_learning_rate)
        )
        return [
            "--num_train_epochs", str(epochs), "--max_steps", str(self.max_steps),
            "--per_device_train_batch_size", str(self.batch_size), "--learning_rate", str(learning_rate),
            "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.03", "--weight_decay", "0.0",
        ]


def fuser_flags(overrides: dict[str, str]) -> list[str]:
    """The default MMFuser's training flags with `overrides` (flag -> value) in place of or beside them."""
    flags = {"--fuser_fusion": "mmfuser", "--mm_vision_select_layer": SELECT_LAYERS,
             "--fuser_num_heads": str(FUSER_HEADS), **overrides}
    return [item for flag_and_value in flags.items() for item in flag_and_value]


def train_two_stages(
    fuser: dict[str, str], seed: int, base_llm: Path, clip: Path, task_dir: Path, output_dir: Path,
    budget: RecipeBudget
) -> Path:
    """Stage 1 (captions, fuser and projector only) then stage 2 (questions, fuser, projector and LLM) of the fuser
    `fuser` describes (see `fuser_flags`); returns the stage-2 checkpoint, a full trust_remote_code folder."""
    common = [
        "--model_name_or_path", str(base_llm), "--vision_tower", str(clip), *fuser_flags(fuser),
        "--image_folder", str(task_dir / IMAGE_DIR),
        "--model_max_length", "192", "--seed", str(seed), "--data_seed", str(seed), "--use_cpu", "True",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "True", "--logging_steps", "25",
        "--dataloader_num_workers", "0",
    ]
    stage1, stage2 = output_dir / "stage1", output_dir / "stage2"
    run_training(*parse_arguments([
        *common, *budget.stage_flags(1), "--version", "plain", "--tune_mm_mlp_adapter", "True",
        "--data_path", str(task_dir / FILES["stage1"]), "--output_dir", str(stage1),
    ]))
    run_training(*parse_arguments([
        *common, *budget.stage_flags(2), "--version", "v1", "--pretrain_mm_mlp_adapter",
        str(stage1 / MM_PROJECTOR_FILE), "--data_path", str(task_dir / FILES["stage2"]), "--output_dir", str(stage2),
    ]))
    return stage2


__all__ = ["FUSIONS", "SELECT_LAYERS", "RecipeBudget", "fuser_flags", "train_two_stages"]
