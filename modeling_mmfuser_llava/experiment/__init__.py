"""The paper's claim at toy scale: `mmfuser-llava experiment` (see `comparison`).

This module stays light (no torch, no training stack): the command line reads `FUSIONS` to build its `--help`.
"""

# Compared models -> their `--fuser_fusion`.
FUSIONS = {"llava": "none", "concat": "concat", "average": "average", "mmfuser": "mmfuser"}
